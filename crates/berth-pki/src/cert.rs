//! Reading certificates: the CA pin, validity, serial, and the renewal policy.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use sha2::Digest as _;

use crate::fsutil::{from_unix_secs, hex};
use crate::{PkiError, TokenError};

/// The SHA-256 of a CA certificate's SubjectPublicKeyInfo, written `sha256:<64 hex>`.
///
/// This is kubeadm's discovery-token-ca-cert-hash: it names the CA's key, so it survives a
/// re-issued CA certificate for the same key, and a token carrying it lets a client trust the
/// satellite's CA on first contact without a copied certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pin([u8; 32]);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({self})")
    }
}

impl Pin {
    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Pin {
        Pin(sha2::Sha256::digest(spki_der).into())
    }

    /// The pin of the public key in a DER certificate.
    pub fn of_cert_der(cert_der: &[u8]) -> Result<Pin, PkiError> {
        let (_, cert) = parse(cert_der, "certificate")?;
        Ok(Pin::of_spki(cert.tbs_certificate.subject_pki.raw))
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex(&self.0))
    }
}

impl FromStr for Pin {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Pin, TokenError> {
        let bad = |reason: &str| TokenError::Malformed {
            reason: format!("CA pin `{s}` {reason}"),
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("does not start with `sha256:`"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("is not 64 lower-case hex digits after `sha256:`"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad("is not hex"))?;
        }
        Ok(Pin(out))
    }
}

/// When a certificate is valid: `[not_before, not_after]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second of validity.
    pub not_before: SystemTime,
    /// Last second of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Clock skew allowance: certificates start this long before they are made.
    pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

    /// Valid from `BACKDATE` before `now` until `now + duration`.
    pub fn starting(now: SystemTime, duration: Duration) -> Validity {
        Validity {
            not_before: now - Validity::BACKDATE,
            not_after: now + duration,
        }
    }

    /// Valid from a few minutes ago for `duration`.
    pub fn from_now(duration: Duration) -> Validity {
        Validity::starting(SystemTime::now(), duration)
    }
}

/// What berth needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name (the client or satellite name), if any.
    pub common_name: Option<String>,
    /// The serial number in lower-case hex, leading zero bytes removed.
    pub serial: String,
    /// When it becomes and stops being valid.
    pub validity: Validity,
    /// The pin of its public key.
    pub pin: Pin,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, PkiError> {
        let (_, cert) = parse(der, "certificate")?;
        let secs = |t: x509_parser::time::ASN1Time| from_unix_secs(t.timestamp().max(0) as u64);
        let raw = cert.raw_serial();
        let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
        Ok(CertInfo {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            serial: hex(&raw[first..]),
            validity: Validity {
                not_before: secs(cert.validity().not_before),
                not_after: secs(cert.validity().not_after),
            },
            pin: Pin::of_spki(cert.tbs_certificate.subject_pki.raw),
        })
    }

    /// Reads the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<CertInfo, PkiError> {
        CertInfo::from_der(&cert_der_from_pem(pem, "certificate")?)
    }

    /// The name to show in messages: the common name, or the serial.
    /// Control characters are shown as `?`, so a name cannot forge log lines.
    pub fn display_name(&self) -> String {
        match &self.common_name {
            Some(cn) => cn
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect(),
            None => format!("with serial {}", self.serial),
        }
    }
}

/// True once half of the certificate's validity has passed (or it has expired): the client
/// then asks for a new certificate while the old one still works. The clock-skew backdate
/// ([`Validity::BACKDATE`]) does not count: a 30-day certificate renews after 15 days.
pub fn needs_renewal(cert_der: &[u8], now: SystemTime) -> Result<bool, PkiError> {
    let v = CertInfo::from_der(cert_der)?.validity;
    let total = v.not_after.duration_since(v.not_before).unwrap_or_default();
    let (start, life) = if total > Validity::BACKDATE {
        (
            v.not_before + Validity::BACKDATE,
            total - Validity::BACKDATE,
        )
    } else {
        (v.not_before, total)
    };
    Ok(now >= start + life / 2)
}

pub(crate) fn parse<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<(&'a [u8], x509_parser::certificate::X509Certificate<'a>), PkiError> {
    x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::BadCertificate {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn cert_der_from_pem(
    pem: &str,
    what: &str,
) -> Result<rustls_pki_types::CertificateDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject as _;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
        PkiError::BadCertificate {
            what: what.to_owned(),
            reason: format!("not a PEM certificate: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_round_trip_and_errors() {
        let pin = Pin::of_spki(b"key");
        assert_eq!(pin.to_string().parse::<Pin>().unwrap(), pin);
        for bad in [
            "sha1:00",
            "sha256:xyz",
            "sha256:",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(bad.parse::<Pin>(), Err(TokenError::Malformed { .. })),
                "{bad}"
            );
        }
    }
}
