//! Build platforms: what `--platform linux/arm64` names, as containerd's `platforms`
//! package parses and normalizes it, which manifest of an index it picks, the
//! `TARGET*`/`BUILD*` ARGs BuildKit gives a build, and whether this kernel can run a
//! foreign platform's binaries (a binfmt_misc handler with the `F` flag).

use std::fmt;
use std::path::Path;

use serde::Serialize;

/// An OCI platform: `os/architecture[/variant]`, normalized (`aarch64` is `arm64`,
/// `arm64/v8` is `arm64`, `armhf` is `arm/v7`, `x86_64` is `amd64`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`, ….
    pub architecture: String,
    /// `v7` for `arm`; empty when the architecture has none.
    pub variant: String,
}

impl Platform {
    /// The platform of the machine berth runs on.
    pub fn host() -> Platform {
        let (os, arch) = crate::image::host_platform();
        Platform::new(os, arch, "")
    }

    /// `os/architecture/variant`, normalized.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        let os = os.to_ascii_lowercase();
        let (architecture, variant) = normalize_arch(
            &architecture.to_ascii_lowercase(),
            &variant.to_ascii_lowercase(),
        );
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// Parse `linux/arm64`, `linux/arm/v7`, `arm64` (os linux) or `linux` (the host's
    /// architecture), as containerd does.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let bad = || {
            format!(
                "platform {s:?} is not os/arch[/variant]; write e.g. linux/amd64, linux/arm64 or linux/arm/v7"
            )
        };
        let parts: Vec<&str> = s.trim().split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(bad());
        }
        Ok(match parts.as_slice() {
            ["local"] => Platform::host(),
            [one] if KNOWN_OS.contains(&one.to_ascii_lowercase().as_str()) => {
                Platform::new(one, &Platform::host().architecture, "")
            }
            [arch] => Platform::new("linux", arch, ""),
            [os, arch] => Platform::new(os, arch, ""),
            [os, arch, variant] => Platform::new(os, arch, variant),
            _ => return Err(bad()),
        })
    }

    /// A comma-separated list (`linux/amd64,linux/arm64`), each parsed, duplicates
    /// dropped.
    pub fn parse_list(s: &str) -> Result<Vec<Platform>, String> {
        let mut out: Vec<Platform> = Vec::new();
        for p in s.split(',') {
            let p = Platform::parse(p)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// This machine's platform.
    pub fn is_host(&self) -> bool {
        *self == Platform::host()
    }

    /// Whether an index entry's `platform` object names this platform: os and
    /// architecture equal, and the variant too when both give one (an entry with no
    /// variant serves any, as containerd's matcher lets `arm64` serve `arm64/v8`).
    pub fn matches(&self, platform: &serde_json::Value) -> bool {
        let field = |k: &str| platform[k].as_str().unwrap_or_default().to_string();
        let other = Platform::new(&field("os"), &field("architecture"), &field("variant"));
        other.os == self.os
            && other.architecture == self.architecture
            && (other.variant.is_empty()
                || self.variant.is_empty()
                || other.variant == self.variant)
    }

    /// BuildKit's automatic platform ARGs of a build for `self` on `build`:
    /// `TARGETPLATFORM`, `TARGETOS`, `TARGETARCH`, `TARGETVARIANT` and the same four for
    /// `BUILD`.
    pub fn build_args(&self, build: &Platform) -> Vec<(&'static str, String)> {
        vec![
            ("TARGETPLATFORM", self.to_string()),
            ("TARGETOS", self.os.clone()),
            ("TARGETARCH", self.architecture.clone()),
            ("TARGETVARIANT", self.variant.clone()),
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone()),
        ]
    }

    /// Whether this kernel runs `self`'s binaries: natively, or through a binfmt_misc
    /// handler registered with the `F` flag (the interpreter is opened when it is
    /// registered, so it works inside a container's root file system too). The error
    /// says what is missing and how to get it.
    pub fn check_emulation(&self) -> Result<(), String> {
        self.check_emulation_in(Path::new(BINFMT_MISC))
    }

    fn check_emulation_in(&self, binfmt: &Path) -> Result<(), String> {
        let host = Platform::host();
        if self.os != host.os {
            return Err(format!(
                "a {self} step cannot run on this {host} host (berth runs {} steps only)",
                host.os
            ));
        }
        if self.architecture == host.architecture
            || (host.architecture == "amd64" && self.architecture == "386")
        {
            return Ok(());
        }
        let qemu = qemu_name(&self.architecture);
        let entry = binfmt.join(format!("qemu-{qemu}"));
        let install = format!(
            "install an emulator that registers it with the F flag, e.g. `apt-get install qemu-user-static` on Debian (machine-wide), or build for {host}"
        );
        let text = match std::fs::read_to_string(&entry) {
            Ok(t) => t,
            Err(_) if !binfmt.join("status").exists() => {
                return Err(format!(
                    "running {self} binaries on this {host} host needs emulation, and binfmt_misc is not mounted at {}; mount it (mount -t binfmt_misc binfmt_misc {}) and {install}",
                    binfmt.display(),
                    binfmt.display()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "running {self} binaries on this {host} host needs emulation, and no binfmt_misc handler for {qemu} is registered ({} is missing); {install}",
                    entry.display()
                ));
            }
        };
        let mut lines = text.lines();
        if lines.next() != Some("enabled") {
            return Err(format!(
                "running {self} binaries needs emulation, and the binfmt_misc handler {} is disabled; enable it (echo 1 > {})",
                entry.display(),
                entry.display()
            ));
        }
        let flags = lines
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap_or_default();
        if !flags.contains('F') {
            return Err(format!(
                "running {self} binaries needs emulation, and the binfmt_misc handler {} lacks the F flag, so its interpreter cannot be found inside a container; register it again with F (Debian's qemu-user-static does)",
                entry.display()
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Platform, String> {
        Platform::parse(s)
    }
}

/// Where the kernel's binfmt_misc handlers are.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Operating systems a one-word platform may name (else the word is an architecture).
const KNOWN_OS: [&str; 6] = ["linux", "windows", "darwin", "freebsd", "netbsd", "openbsd"];

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (a, v) = match (arch, variant) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "" | "v1") => ("amd64", ""),
        ("x86_64" | "x86-64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "") => ("arm64", ""),
        ("aarch64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5" | "6" | "8") => return ("arm".into(), format!("v{variant}")),
        (a, v) => (a, v),
    };
    (a.to_string(), v.to_string())
}

/// The name QEMU (and its binfmt_misc entry, `qemu-NAME`) gives an OCI architecture.
fn qemu_name(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::Platform;

    #[test]
    fn platforms_parse_and_normalize_as_containerd() {
        let p = |s: &str| Platform::parse(s).map(|p| p.to_string());
        assert_eq!(p("linux/arm64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/aarch64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm64/v8").unwrap(), "linux/arm64");
        assert_eq!(p("linux/x86_64").unwrap(), "linux/amd64");
        assert_eq!(p("arm64").unwrap(), "linux/arm64");
        assert_eq!(p("linux/arm").unwrap(), "linux/arm/v7");
        assert_eq!(p("linux/armhf").unwrap(), "linux/arm/v7");
        assert_eq!(p("Linux/ARM/v6").unwrap(), "linux/arm/v6");
        assert_eq!(p("linux").unwrap(), Platform::host().to_string());
        for bad in ["", "linux/", "/arm64", "linux/arm/v7/x", "linux/ arm64"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("is not os/arch[/variant]"), "{bad:?}: {e}");
        }
        assert_eq!(
            Platform::parse_list("linux/amd64, linux/arm64,linux/amd64")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn index_entries_match_by_os_arch_and_variant() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        let entry = |v: serde_json::Value| v;
        assert!(arm64.matches(&entry(
            serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})
        )));
        assert!(!arm64.matches(&entry(
            serde_json::json!({"os": "linux", "architecture": "amd64"})
        )));
        assert!(v7.matches(&entry(
            serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"})
        )));
        assert!(!v7.matches(&entry(
            serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"})
        )));
        assert!(!arm64.matches(&serde_json::Value::Null));
    }

    #[test]
    fn emulation_needs_an_enabled_handler_with_the_f_flag() {
        let dir = tempfile::tempdir().unwrap();
        let host = Platform::host();
        assert!(host.check_emulation_in(dir.path()).is_ok());
        let foreign = if host.architecture == "arm64" {
            Platform::parse("linux/amd64").unwrap()
        } else {
            Platform::parse("linux/arm64").unwrap()
        };
        let qemu = super::qemu_name(&foreign.architecture).to_string();
        let e = foreign.check_emulation_in(dir.path()).unwrap_err();
        assert!(e.contains("binfmt_misc is not mounted"), "{e}");
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let e = foreign.check_emulation_in(dir.path()).unwrap_err();
        assert!(
            e.contains(&format!("no binfmt_misc handler for {qemu} is registered"))
                && e.contains("apt-get install qemu-user-static"),
            "{e}"
        );
        let entry = dir.path().join(format!("qemu-{qemu}"));
        std::fs::write(
            &entry,
            format!("enabled\ninterpreter /usr/libexec/qemu-binfmt/{qemu}-binfmt-P\nflags: P\n"),
        )
        .unwrap();
        let e = foreign.check_emulation_in(dir.path()).unwrap_err();
        assert!(e.contains("lacks the F flag"), "{e}");
        std::fs::write(&entry, "disabled\nflags: F\n").unwrap();
        let e = foreign.check_emulation_in(dir.path()).unwrap_err();
        assert!(e.contains("is disabled"), "{e}");
        std::fs::write(
            &entry,
            format!("enabled\ninterpreter /usr/bin/qemu-{qemu}-static\nflags: OCF\n"),
        )
        .unwrap();
        assert!(foreign.check_emulation_in(dir.path()).is_ok());
    }
}
