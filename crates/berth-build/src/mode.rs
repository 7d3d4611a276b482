//! Symbolic file modes for `COPY --chmod=u+x,go-w` (Dockerfile 1.14), read as BuildKit
//! reads them: the BSD `setmode` rules of chmod(1) with a umask of 0. A set is parsed
//! once and applied to each copied file and folder (`X` adds execute to folders and to
//! files that already have it).

/// The permission bits a mode may hold: setuid, setgid and rwx for all three classes.
const STANDARD: u32 = 0o6777;
/// The sticky bit.
const STICKY: u32 = 0o1000;
/// Copy command flags: clear the class, set it, and the classes it applies to.
const CLEAR: u8 = 1;
const SET: u8 = 2;
const G_BITS: u8 = 4;
const O_BITS: u8 = 8;
const U_BITS: u8 = 16;
/// At most this many commands (a clause makes one to four; real modes have one to
/// three clauses), so a set is a small `Copy` value.
const MAX: usize = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cmd {
    /// `+`, `-`, `X` (add execute where it applies), or `u`/`g`/`o` (copy that class).
    op: u8,
    flags: u8,
    bits: u32,
}

/// A parsed symbolic mode (`u=rwx,go=rx`, `+x`, `a-w`, `g=u`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeSet {
    cmds: [Cmd; MAX],
    len: usize,
}

impl ModeSet {
    /// Parse a symbolic mode; `None` if it is not one (octal modes are parsed apart).
    pub fn parse(text: &str) -> Option<ModeSet> {
        let mut set = ModeSet {
            cmds: [Cmd::default(); MAX],
            len: 0,
        };
        let s = text.as_bytes();
        if s.first().is_none_or(u8::is_ascii_digit) {
            return None;
        }
        let mut i = 0;
        let mut equal_done = false;
        loop {
            let mut who = 0;
            while let Some(&c) = s.get(i) {
                who |= match c {
                    b'a' => STANDARD,
                    b'u' => 0o4700,
                    b'g' => 0o2070,
                    b'o' => 0o0007,
                    _ => break,
                };
                i += 1;
            }
            // One or more operations for these classes: `u+x-w`.
            loop {
                let op = *s.get(i)?;
                i += 1;
                match op {
                    b'+' | b'-' => {}
                    b'=' => equal_done = false,
                    _ => return None,
                }
                who &= !STICKY;
                let (mut perm, mut perm_x) = (0, 0);
                loop {
                    let b = s.get(i).copied().unwrap_or(0);
                    let not_only_other = who == 0 || who & !0o0007 != 0;
                    match b {
                        b'r' => perm |= 0o444,
                        b'w' => perm |= 0o222,
                        b'x' => perm |= 0o111,
                        b'X' if op == b'+' => perm_x = 0o111,
                        b'X' => {}
                        b's' if not_only_other => perm |= 0o6000,
                        b't' if not_only_other => {
                            who |= STICKY;
                            perm |= STICKY;
                        }
                        b's' | b't' => {}
                        b'u' | b'g' | b'o' => {
                            if perm != 0 {
                                set.add(op, who, perm)?;
                                perm = 0;
                            }
                            if op == b'=' {
                                equal_done = true;
                            }
                            if perm_x != 0 {
                                set.add(b'X', who, perm_x)?;
                                perm_x = 0;
                            }
                            set.add(b, who, u32::from(op))?;
                        }
                        _ => {
                            if perm != 0 || (op == b'=' && !equal_done) {
                                if op == b'=' {
                                    equal_done = true;
                                }
                                set.add(op, who, perm)?;
                            }
                            if perm_x != 0 {
                                set.add(b'X', who, perm_x)?;
                            }
                            break;
                        }
                    }
                    i += 1;
                }
                match s.get(i) {
                    None => return Some(set),
                    Some(b',') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn push(&mut self, cmd: Cmd) -> Option<()> {
        *self.cmds.get_mut(self.len)? = cmd;
        self.len += 1;
        Some(())
    }

    /// setmode's `addcmd`, with a umask of 0.
    fn add(&mut self, op: u8, who: u32, arg: u32) -> Option<()> {
        let mask = !0u32;
        let bits = |arg: u32| if who != 0 { who & arg } else { mask & arg };
        match op {
            b'=' => {
                let clear = if who != 0 { who } else { STANDARD };
                self.push(Cmd {
                    op: b'-',
                    flags: 0,
                    bits: clear,
                })?;
                self.push(Cmd {
                    op: b'+',
                    flags: 0,
                    bits: bits(arg),
                })
            }
            b'+' | b'-' | b'X' => self.push(Cmd {
                op,
                flags: 0,
                bits: bits(arg),
            }),
            _ => {
                let (mut flags, bits) = if who != 0 {
                    let mut f = 0;
                    if who & 0o400 != 0 {
                        f |= U_BITS;
                    }
                    if who & 0o040 != 0 {
                        f |= G_BITS;
                    }
                    if who & 0o004 != 0 {
                        f |= O_BITS;
                    }
                    (f, !0u32)
                } else {
                    (U_BITS | G_BITS | O_BITS, mask)
                };
                flags |= match arg as u8 {
                    b'+' => SET,
                    b'-' => CLEAR,
                    _ => SET | CLEAR,
                };
                self.push(Cmd { op, flags, bits })
            }
        }
    }

    /// The mode (permission and special bits) `mode` becomes; `is_dir` for `X`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let old = mode & 0o7777;
        let mut new = old;
        for c in &self.cmds[..self.len] {
            match c.op {
                b'u' => new = copy_class(c, new, (new & 0o700) >> 6),
                b'g' => new = copy_class(c, new, (new & 0o070) >> 3),
                b'o' => new = copy_class(c, new, new & 0o007),
                b'+' => new |= c.bits,
                b'-' => new &= !c.bits,
                _ => {
                    if old & 0o111 != 0 || is_dir {
                        new |= c.bits;
                    }
                }
            }
        }
        new & 0o7777
    }
}

/// `g=u` and friends: put the class `value` (rwx) into the classes `c` names.
fn copy_class(c: &Cmd, mut mode: u32, value: u32) -> u32 {
    let shifts = [(U_BITS, 6), (G_BITS, 3), (O_BITS, 0)];
    if c.flags & CLEAR != 0 {
        let clear = if c.flags & SET != 0 { 0o7 } else { value };
        for (f, shift) in shifts {
            if c.flags & f != 0 {
                mode &= !((clear << shift) & c.bits);
            }
        }
    }
    if c.flags & SET != 0 {
        for (f, shift) in shifts {
            if c.flags & f != 0 {
                mode |= (value << shift) & c.bits;
            }
        }
    }
    mode
}

#[cfg(test)]
mod tests {
    use super::ModeSet;

    fn apply(text: &str, mode: u32, is_dir: bool) -> u32 {
        ModeSet::parse(text)
            .unwrap_or_else(|| panic!("{text} parses"))
            .apply(mode, is_dir)
    }

    #[test]
    fn symbolic_modes_follow_chmod() {
        // (mode, before, is a folder, after)
        let cases = [
            ("+x", 0o644, false, 0o755),
            ("u+x", 0o644, false, 0o744),
            ("a-w", 0o666, false, 0o444),
            ("u=rwx,go=rx", 0o600, false, 0o755),
            ("go=", 0o777, false, 0o700),
            ("u+x-w", 0o644, false, 0o544),
            ("g=u", 0o640, false, 0o660),
            // Copy a class, then remove from it.
            ("o=g-w", 0o674, false, 0o675),
            // X: execute for folders and for files that already have some.
            ("a+X", 0o644, false, 0o644),
            ("a+X", 0o644, true, 0o755),
            ("a+X", 0o744, false, 0o755),
            // s for user and group, t for everyone, never for `o` alone.
            ("u+s", 0o755, false, 0o4755),
            ("g+s", 0o755, false, 0o2755),
            ("+t", 0o777, true, 0o1777),
            ("o+t", 0o777, true, 0o777),
            // `=` clears the special bits.
            ("=r", 0o4755, false, 0o444),
        ];
        for (text, before, is_dir, after) in cases {
            assert_eq!(apply(text, before, is_dir), after, "{text} on {before:o}");
        }
    }

    #[test]
    fn what_is_not_a_symbolic_mode() {
        let too_long = ["u+x"; 17].join(",");
        for bad in [
            "",
            "755",
            "u",
            "u+z",
            "q+x",
            "u+x,",
            "+x,,g-w",
            too_long.as_str(),
        ] {
            assert!(ModeSet::parse(bad).is_none(), "{bad:?}");
        }
    }
}
