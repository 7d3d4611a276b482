//! berth's own certificate authority, and the identities (certificate + key) it issues.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;
use crate::cert::{CertInfo, Pin, Validity, cert_der_from_pem};
use crate::fsutil::{create_private_dir, random, read_text, write_atomic};

/// How long a CA made by [`Ca::create`] is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a client certificate is valid unless told otherwise (renewed after half).
pub const DEFAULT_CLIENT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a server certificate is valid unless told otherwise.
pub const DEFAULT_SERVER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";

/// A certificate authority: an ECDSA P-256 key and its self-signed certificate.
///
/// The key lives only in memory and in `ca.key` (0600) of the directory given to
/// [`Ca::save`]; nothing in this crate serialises it anywhere else.
pub struct Ca {
    name: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("name", &self.name)
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new CA named `name` (its certificate's common name), valid for [`CA_VALIDITY`].
    pub fn create(name: &str) -> Result<Ca, PkiError> {
        let key = new_key()?;
        let mut params = base_params(name, Validity::from_now(CA_VALIDITY));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .map_err(PkiError::rcgen(format!("make CA certificate for {name}")))?;
        Ok(Ca {
            name: name.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// Writes `ca.key` (0600) and `ca.crt` (0644) into `dir` (created 0700 if missing),
    /// each atomically. The key goes first, so a present certificate implies its key.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        write_atomic(
            &dir.join(CA_KEY_FILE),
            self.key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), 0o644)
    }

    /// Reads a CA saved by [`Ca::save`]. Refuses a key file other users can read, and a
    /// certificate that does not belong to the key.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let key_path = dir.join(CA_KEY_FILE);
        let key = load_key(&key_path)?;
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let cert_der = cert_der_from_pem(&cert_pem, &dir.join(CA_CERT_FILE).display().to_string())?;
        let info = CertInfo::from_der(&cert_der)?;
        if info.pin != Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key)) {
            return Err(PkiError::KeyMismatch {
                dir: dir.to_owned(),
            });
        }
        let name = info.common_name.unwrap_or_default();
        Ok(Ca {
            name,
            cert_der,
            cert_pem,
            key,
        })
    }

    /// Loads the CA in `dir`, or makes and saves one named `name` if there is none.
    /// The flag says whether it was created (first start).
    pub fn load_or_create(dir: &Path, name: &str) -> Result<(Ca, bool), PkiError> {
        if dir.join(CA_CERT_FILE).exists() {
            return Ok((Ca::load(dir)?, false));
        }
        let ca = Ca::create(name)?;
        ca.save(dir)?;
        Ok((ca, true))
    }

    /// The CA's name (its certificate's common name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo: what tokens carry.
    pub fn pin(&self) -> Pin {
        Pin::of_spki(&rcgen::PublicKeyData::subject_public_key_info(&self.key))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A server certificate and new key for `names` (DNS) and `ips`, signed by this CA.
    /// Which addresses the host has is the caller's to find out; the first name (or address)
    /// becomes the common name. The returned chain includes the CA certificate, so a client on
    /// first contact can check it against its pin.
    pub fn issue_server_cert(
        &self,
        names: &[String],
        ips: &[IpAddr],
        validity: Validity,
    ) -> Result<Identity, PkiError> {
        let cn = names
            .first()
            .cloned()
            .or_else(|| ips.first().map(ToString::to_string));
        let cn = cn.ok_or_else(|| PkiError::BadCertificate {
            what: "server certificate".into(),
            reason: "no name or address given; pass the names clients connect to".into(),
        })?;
        let mut params = base_params(&cn, validity);
        for name in names {
            let dns = name
                .clone()
                .try_into()
                .map_err(PkiError::rcgen(format!("server name `{name}`")))?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = new_key()?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(PkiError::rcgen(format!("sign server certificate for {cn}")))?;
        Ok(Identity {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a client's certificate signing request (PEM) for `client_name`.
    ///
    /// The CSR's signature is verified (it proves the client holds the key), its common name
    /// must be `client_name`; everything else it asks for is ignored: the certificate gets
    /// `client_name` as common name, the clientAuth usage only, a random 128-bit serial and
    /// `validity` (normally [`DEFAULT_CLIENT_VALIDITY`] from now).
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        client_name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, PkiError> {
        let refuse = |reason: String| PkiError::Csr {
            client: client_name.to_owned(),
            reason,
        };
        if !is_valid_client_name(client_name) {
            return Err(refuse(
                "a client name is 1 to 64 letters, digits, `.`, `-` or `_`, starting with a letter or digit".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| refuse(format!("{e}; the client must send a CSR made by berth")))?;
        let asked = dn_common_name(&csr.params.distinguished_name);
        if asked.as_deref() != Some(client_name) {
            return Err(refuse(format!(
                "the CSR is for {}, not for {client_name}",
                asked.unwrap_or_else(|| "no common name".into())
            )));
        }
        let mut params = base_params(client_name, validity);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer()?)
        .map_err(PkiError::rcgen(format!(
            "sign client certificate for {client_name}"
        )))?;
        Ok(IssuedCert {
            info: CertInfo::from_der(signed.der())?,
            cert_pem: signed.pem(),
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(PkiError::rcgen(format!(
            "read CA certificate of {}",
            self.name
        )))
    }
}

/// Client names end up in certificates, file names and messages: keep them plain.
fn is_valid_client_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn dn_common_name(dn: &rcgen::DistinguishedName) -> Option<String> {
    match dn.get(&DnType::CommonName)? {
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

/// A certificate the CA issued for a client, with what the satellite records of it.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM (to send to the client).
    pub cert_pem: String,
    /// Its name, serial and validity (for the satellite's client list and revocations).
    pub info: CertInfo,
}

/// A certificate chain (PEM, leaf first) with its private key (PEM): a server's or a
/// client's TLS identity. Saved as `<stem>.crt` (0644) and `<stem>.key` (0600).
#[derive(Clone)]
pub struct Identity {
    /// The certificate chain, PEM, leaf first.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Writes `<dir>/<stem>.key` (0600) then `<dir>/<stem>.crt` (0644), atomically.
    pub fn save(&self, dir: &Path, stem: &str) -> Result<(), PkiError> {
        create_private_dir(dir)?;
        write_atomic(
            &dir.join(format!("{stem}.key")),
            self.key_pem.as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.join(format!("{stem}.crt")),
            self.cert_pem.as_bytes(),
            0o644,
        )
    }

    /// Reads what [`Identity::save`] wrote; refuses a key file other users can read.
    pub fn load(dir: &Path, stem: &str) -> Result<Identity, PkiError> {
        let key_path = dir.join(format!("{stem}.key"));
        check_key_mode(&key_path)?;
        Ok(Identity {
            key_pem: read_text(&key_path)?,
            cert_pem: read_text(&dir.join(format!("{stem}.crt")))?,
        })
    }

    /// The chain as DER, leaf first.
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        use rustls_pki_types::pem::PemObject as _;
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::BadCertificate {
                what: "certificate chain".into(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(PkiError::BadCertificate {
                what: "certificate chain".into(),
                reason: "no certificate in the PEM text".into(),
            });
        }
        Ok(chain)
    }

    /// The private key as DER.
    pub fn key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        use rustls_pki_types::pem::PemObject as _;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| {
            PkiError::BadCertificate {
                what: "private key".into(),
                reason: e.to_string(),
            }
        })
    }

    /// Name, serial and validity of the leaf certificate.
    pub fn info(&self) -> Result<CertInfo, PkiError> {
        CertInfo::from_der(&self.chain()?[0])
    }
}

/// A client's key pair, made on the client; only its public half leaves, inside a CSR.
pub struct ClientKey {
    key: KeyPair,
}

impl ClientKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<ClientKey, PkiError> {
        Ok(ClientKey { key: new_key()? })
    }

    /// A certificate signing request (PEM) for `client_name`, signed with this key.
    pub fn csr_pem(&self, client_name: &str) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        let what = || format!("make certificate signing request for {client_name}");
        params
            .serialize_request(&self.key)
            .map_err(PkiError::rcgen(what()))?
            .pem()
            .map_err(PkiError::rcgen(what()))
    }

    /// This key with the certificate the CA returned: the client's TLS identity, to save
    /// with [`Identity::save`].
    pub fn into_identity(self, cert_pem: String) -> Identity {
        Identity {
            cert_pem,
            key_pem: self.key.serialize_pem(),
        }
    }
}

fn new_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(PkiError::rcgen("generate ECDSA P-256 key"))
}

fn base_params(common_name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    // 128 random bits, top bit clear so the DER INTEGER stays 16 bytes and positive.
    let mut serial = random::<16>();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

fn check_key_mode(path: &Path) -> Result<(), PkiError> {
    let mode = std::fs::metadata(path)
        .map_err(PkiError::io("read", path))?
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecureKeyFile {
            path: PathBuf::from(path),
            mode,
        });
    }
    Ok(())
}

fn load_key(path: &Path) -> Result<KeyPair, PkiError> {
    check_key_mode(path)?;
    KeyPair::from_pem(&read_text(path)?)
        .map_err(PkiError::rcgen(format!("read key {}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::needs_renewal;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn save_load_keeps_identity_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let (ca, created) = Ca::load_or_create(&pki, "sat-1").unwrap();
        assert!(created);
        assert_eq!(mode(&pki.join("ca.key")), 0o600);
        assert_eq!(mode(&pki.join("ca.crt")), 0o644);
        assert_eq!(mode(&pki), 0o700);
        let (again, created) = Ca::load_or_create(&pki, "ignored").unwrap();
        assert!(!created);
        assert_eq!(again.pin(), ca.pin());
        assert_eq!(again.name(), "sat-1");
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(Pin::of_cert_der(ca.cert_der()).unwrap(), ca.pin());
        assert!(
            !format!("{ca:?}").contains("PRIVATE"),
            "Debug never shows the key"
        );
    }

    #[test]
    fn load_refuses_readable_key_and_foreign_cert() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        Ca::create("a").unwrap().save(dir.path()).unwrap();
        let key = dir.path().join("ca.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ca::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, PkiError::InsecureKeyFile { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let other = Ca::create("b").unwrap();
        std::fs::write(dir.path().join("ca.crt"), other.cert_pem()).unwrap();
        assert!(matches!(
            Ca::load(dir.path()),
            Err(PkiError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn client_certificate_from_csr() {
        let ca = Ca::create("sat").unwrap();
        let key = ClientKey::generate().unwrap();
        let csr = key.csr_pem("laptop").unwrap();
        let issued = ca
            .sign_client_csr(&csr, "laptop", Validity::from_now(DEFAULT_CLIENT_VALIDITY))
            .unwrap();
        assert_eq!(issued.info.common_name.as_deref(), Some("laptop"));
        assert_eq!(
            issued.info.serial.len(),
            32,
            "128-bit serial: {}",
            issued.info.serial
        );
        let days = |d: Duration| d.as_secs() / 86_400;
        let v = issued.info.validity;
        assert_eq!(
            days(v.not_after.duration_since(SystemTime::now()).unwrap()),
            29
        );

        let der = crate::cert::cert_der_from_pem(&issued.cert_pem, "client").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert_eq!(cert.issuer().to_string(), "CN=sat");

        let other = ca
            .sign_client_csr(&key.csr_pem("laptop").unwrap(), "laptop", v)
            .unwrap();
        assert_ne!(other.info.serial, issued.info.serial, "serials are random");
        let identity = key.into_identity(issued.cert_pem);
        assert_eq!(
            identity.info().unwrap().pin,
            issued.info.pin,
            "certificate carries the client's key"
        );
    }

    #[test]
    fn csr_refusals() {
        let ca = Ca::create("sat").unwrap();
        let key = ClientKey::generate().unwrap();
        let v = Validity::from_now(DEFAULT_CLIENT_VALIDITY);
        let err = ca
            .sign_client_csr(&key.csr_pem("laptop").unwrap(), "ci-runner", v)
            .unwrap_err();
        assert!(
            err.to_string().contains("is for laptop, not for ci-runner"),
            "{err}"
        );
        assert!(matches!(
            ca.sign_client_csr("garbage", "laptop", v),
            Err(PkiError::Csr { .. })
        ));

        // Flip a bit in the signature (the DER's last byte): the CSR no longer proves the key.
        use rustls_pki_types::pem::PemObject as _;
        let mut der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(
            key.csr_pem("laptop").unwrap().as_bytes(),
        )
        .unwrap()
        .as_ref()
        .to_vec();
        *der.last_mut().unwrap() ^= 1;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64(&der)
        );
        let err = ca.sign_client_csr(&tampered, "laptop", v).unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("signature"),
            "{err}"
        );
    }

    #[test]
    fn renewal_after_half_the_validity() {
        let ca = Ca::create("sat").unwrap();
        let key = ClientKey::generate().unwrap();
        // As berth issues them: valid from a few minutes before `start` (clock skew).
        let start = SystemTime::now();
        let v = Validity::starting(start, Duration::from_secs(30 * 86_400));
        let issued = ca
            .sign_client_csr(&key.csr_pem("laptop").unwrap(), "laptop", v)
            .unwrap();
        let der = crate::cert::cert_der_from_pem(&issued.cert_pem, "client").unwrap();
        let day = |n: u64| start + Duration::from_secs(n * 86_400);
        assert!(!needs_renewal(&der, start).unwrap());
        assert!(!needs_renewal(&der, day(14)).unwrap());
        assert!(needs_renewal(&der, day(15) + Duration::from_secs(1)).unwrap());
        assert!(needs_renewal(&der, day(31)).unwrap());
    }

    #[test]
    fn server_certificate_names_and_chain() {
        let ca = Ca::create("sat").unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let id = ca
            .issue_server_cert(
                &["sat.internal".into()],
                &[ip],
                Validity::from_now(DEFAULT_SERVER_VALIDITY),
            )
            .unwrap();
        let chain = id.chain().unwrap();
        assert_eq!(chain.len(), 2, "leaf and CA");
        assert_eq!(&chain[1], ca.cert_der());
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let san = format!(
            "{:?}",
            leaf.subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
        );
        assert!(
            san.contains("sat.internal") && san.contains("[10, 1, 2, 3]"),
            "{san}"
        );
        let dir = tempfile::tempdir().unwrap();
        id.save(dir.path(), "server").unwrap();
        assert_eq!(mode(&dir.path().join("server.key")), 0o600);
        assert_eq!(
            Identity::load(dir.path(), "server").unwrap().cert_pem,
            id.cert_pem
        );
        assert!(
            ca.issue_server_cert(&[], &[], Validity::from_now(DEFAULT_SERVER_VALIDITY))
                .is_err()
        );
    }

    fn base64(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
