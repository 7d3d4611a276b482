//! A small YAML emitter for what berth prints (`berth satellite manifests`): a
//! `serde_json::Value` as block YAML. There is no YAML crate in the workspace, and JSON
//! values need only maps, lists and scalars. A string is written plain only when it
//! cannot be read back as anything else (a number, a bool, null, a flow or comment
//! marker); otherwise it is quoted as JSON, which is valid YAML.

use serde_json::Value;

/// `value` as a YAML block (one document, no `---`), ending in a newline.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => lines(value, &mut out, 0),
        Value::Array(a) if !a.is_empty() => lines(value, &mut out, 0),
        v => out.push_str(&scalar(v)),
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn is_block(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// Writes a non-empty map or list, each line indented by `indent`.
fn lines(v: &Value, out: &mut String, indent: usize) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                out.push_str(&pad);
                out.push_str(&string(k));
                if is_block(val) {
                    out.push_str(":\n");
                    lines(val, out, indent + 2);
                } else {
                    out.push_str(": ");
                    out.push_str(&scalar(val));
                    out.push('\n');
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                if is_block(item) {
                    // The item's first line goes after the dash, the rest under it.
                    let mut inner = String::new();
                    lines(item, &mut inner, indent + 2);
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&inner[indent + 2..]);
                } else {
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&scalar(item));
                    out.push('\n');
                }
            }
        }
        _ => unreachable!("lines() is called on maps and lists"),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => string(s),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
    }
}

/// Plain when safe, else JSON-quoted.
fn string(s: &str) -> String {
    if plain_ok(s) {
        s.to_owned()
    } else {
        serde_json::to_string(s).expect("a string serializes")
    }
}

fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    // Only characters that mean nothing to YAML in a plain scalar.
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | '_' | '='))
    {
        return false;
    }
    // YAML 1.1 and 1.2 keywords (booleans, null), case-insensitively.
    const WORDS: &[&str] = &["true", "false", "yes", "no", "on", "off", "y", "n", "null"];
    if WORDS.iter().any(|w| w.eq_ignore_ascii_case(s)) || s == "~" {
        return false;
    }
    if first.is_ascii_digit() || first == '.' {
        // Numbers in any YAML dialect (0x1f, 1_000, 1e3, .5) stay quoted; Kubernetes
        // quantities such as 50Gi and 500M are plain.
        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &s[digits.len()..];
        return !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
            && [
                "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
            ]
            .contains(&unit);
    }
    // `-x` and `--flag` are plain; `-1`, `-.5`, a lone `-` and `---` are not.
    if first == '-' {
        let second = s.chars().nth(1);
        return second.is_some_and(|c| c.is_ascii_alphabetic() || c == '-')
            && !s.starts_with("---");
    }
    first.is_ascii_alphabetic() || first == '/' || first == '_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blocks_lists_and_quoting() {
        let v = json!({
            "kind": "Service",
            "metadata": {"name": "b", "labels": {"app.kubernetes.io/name": "x"}},
            "spec": {
                "ports": [{"name": "p", "port": 8372}, {"name": "q", "port": 1}],
                "args": ["--root=/var/lib/berth", "a b", "true", "8372", "50Gi", "0x1F", "-1", "---x"],
                "empty": {}, "none": [], "null": null, "ok": true
            }
        });
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "kind: Service\nmetadata:\n  labels:\n    app.kubernetes.io/name: x\n  name: b\n\
             spec:\n  args:\n    - --root=/var/lib/berth\n    - \"a b\"\n    - \"true\"\n    \
             - \"8372\"\n    - 50Gi\n    - \"0x1F\"\n    - \"-1\"\n    - \"---x\"\n  empty: {}\n  \
             none: []\n  \"null\": null\n  ok: true\n  ports:\n    - name: p\n      port: 8372\n    \
             - name: q\n      port: 1\n"
        );
    }

    #[test]
    fn nested_lists() {
        assert_eq!(
            to_yaml(&json!([[1, 2], {"a": [3]}])),
            "- - 1\n  - 2\n- a:\n    - 3\n"
        );
    }
}
