//! Enrollment and mutual TLS over real TLS handshakes on 127.0.0.1 (tokio-rustls).
//!
//! A small satellite stand-in speaks one JSON line per connection:
//! `{"enroll": {id, secret, name, csr}}` → `{"cert": PEM}` or `{"error": text}`, and
//! `{"hello": null}` → `{"hello": <client name or "anonymous">}`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_pki::{
    Ca, CertInfo, ClientAuth, ClientKey, DEFAULT_CLIENT_VALIDITY, DEFAULT_SERVER_VALIDITY,
    Identity, Pin, RevocationList, ServerTrust, Token, TokenKind, TokenOptions, TokenStore,
    Validity, client_config, explain_refusal, first_contact, needs_renewal, server_config,
};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Satellite {
    _root: tempfile::TempDir,
    ca: Ca,
    tokens: TokenStore,
    addr: SocketAddr,
    root: std::path::PathBuf,
}

impl Satellite {
    async fn start(name: &str, client_auth: ClientAuth) -> Satellite {
        let root_dir = tempfile::tempdir().unwrap();
        let root = root_dir.path().to_owned();
        let (ca, created) = Ca::load_or_create(&root.join("pki"), name).unwrap();
        assert!(created);
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = ca
            .issue_server_cert(
                &["localhost".into()],
                &[localhost],
                Validity::from_now(DEFAULT_SERVER_VALIDITY),
            )
            .unwrap();
        let tokens = TokenStore::open(&root.join("tokens")).unwrap();
        let revocations = Arc::new(RevocationList::open(&root.join("revoked.json")).unwrap());
        let config = server_config(ca.cert_der(), &server, revocations, client_auth).unwrap();
        let listener = TcpListener::bind((localhost, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let state = Arc::new((Ca::load(&root.join("pki")).unwrap(), tokens.clone()));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    // A refused handshake ends here; the client sees the alert.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, &state.0, &state.1).await;
                    }
                });
            }
        });
        Satellite {
            _root: root_dir,
            ca,
            tokens,
            addr,
            root,
        }
    }

    fn token(&self, options: TokenOptions) -> String {
        self.tokens
            .create(
                options,
                &self.addr.to_string(),
                self.ca.pin(),
                SystemTime::now(),
            )
            .unwrap()
            .to_string()
    }

    fn revocations(&self) -> RevocationList {
        RevocationList::open(&self.root.join("revoked.json")).unwrap()
    }
}

async fn serve(tls: tokio_rustls::server::TlsStream<TcpStream>, ca: &Ca, tokens: &TokenStore) {
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| CertInfo::from_der(c).unwrap().display_name());
    let (r, mut w) = tokio::io::split(tls);
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let request: Value = serde_json::from_str(&line).unwrap();
    let reply = if let Some(e) = request.get("enroll") {
        let s = |k: &str| e[k].as_str().unwrap().to_owned();
        match tokens
            .redeem(TokenKind::Enroll, &s("id"), &s("secret"), SystemTime::now())
            .and_then(|_| {
                ca.sign_client_csr(
                    &s("csr"),
                    &s("name"),
                    Validity::from_now(DEFAULT_CLIENT_VALIDITY),
                )
            }) {
            Ok(issued) => json!({ "cert": issued.cert_pem }),
            Err(err) => json!({ "error": err.to_string() }),
        }
    } else if let Some(r) = request.get("renew") {
        // Renewal runs over mutual TLS: the name comes from the verified certificate.
        match peer {
            Some(name) => match ca.sign_client_csr(
                r["csr"].as_str().unwrap(),
                &name,
                Validity::from_now(DEFAULT_CLIENT_VALIDITY),
            ) {
                Ok(issued) => json!({ "cert": issued.cert_pem }),
                Err(err) => json!({ "error": err.to_string() }),
            },
            None => json!({ "error": "renewal needs a client certificate" }),
        }
    } else {
        json!({ "hello": peer.unwrap_or_else(|| "anonymous".into()) })
    };
    w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
    w.shutdown().await.unwrap();
}

async fn call(config: ClientConfig, addr: SocketAddr, request: Value) -> std::io::Result<Value> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (r, mut w) = tokio::io::split(tls);
    w.write_all(format!("{request}\n").as_bytes()).await?;
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(serde_json::from_str(&line).unwrap())
}

/// What `berth satellite add` will do: parse, pinned first contact, CSR, store.
async fn enroll(
    token_text: &str,
    name: &str,
) -> Result<(CertificateDer<'static>, Identity), String> {
    let token: Token = token_text.parse().map_err(|e| format!("{e}"))?;
    let (config, verifier) = first_contact(token.pin).unwrap();
    let key = ClientKey::generate().unwrap();
    let request = json!({ "enroll": {
        "id": token.id, "secret": token.secret, "name": name, "csr": key.csr_pem(name).unwrap() } });
    let reply = call(config, token.addr.parse().unwrap(), request)
        .await
        .map_err(|e| explained(&e))?;
    if let Some(err) = reply.get("error") {
        return Err(err.as_str().unwrap().to_owned());
    }
    let ca = verifier.ca_cert().expect("handshake matched a CA");
    assert_eq!(Pin::of_cert_der(&ca).unwrap(), token.pin);
    Ok((
        ca,
        key.into_identity(reply["cert"].as_str().unwrap().to_owned()),
    ))
}

fn explained(err: &std::io::Error) -> String {
    explain_refusal(err).unwrap_or_else(|| err.to_string())
}

async fn hello(
    ca: &CertificateDer<'static>,
    identity: Option<&Identity>,
    addr: SocketAddr,
) -> std::io::Result<String> {
    let config = client_config(ServerTrust::Ca(ca.clone()), identity).unwrap();
    Ok(call(config, addr, json!({ "hello": null })).await?["hello"]
        .as_str()
        .unwrap()
        .to_owned())
}

#[tokio::test]
async fn enroll_then_mutual_tls() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let token = sat.token(TokenOptions::default());
    let (ca, identity) = enroll(&token, "laptop").await.unwrap();
    assert_eq!(&ca, sat.ca.cert_der());

    let client_dir = tempfile::tempdir().unwrap();
    identity.save(client_dir.path(), "sat-1").unwrap();
    use std::os::unix::fs::MetadataExt as _;
    let key_mode = std::fs::metadata(client_dir.path().join("sat-1.key"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let identity = Identity::load(client_dir.path(), "sat-1").unwrap();

    assert_eq!(
        hello(&ca, Some(&identity), sat.addr).await.unwrap(),
        "laptop"
    );
    assert_eq!(
        hello(&ca, None, sat.addr).await.unwrap(),
        "anonymous",
        "optional client auth"
    );

    let again = enroll(&token, "laptop").await.unwrap_err();
    assert!(again.contains("was already used"), "{again}");
}

#[tokio::test]
async fn required_client_auth_refuses_anonymous() {
    let sat = Satellite::start("sat-1", ClientAuth::Required).await;
    assert!(hello(sat.ca.cert_der(), None, sat.addr).await.is_err());
}

#[tokio::test]
async fn wrong_pin_refused() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let token = sat.token(TokenOptions::default());
    let wrong = Pin::of_spki(b"some other key").to_string();
    let tampered = format!("{}#{wrong}", token.rsplit_once('#').unwrap().0);
    let err = enroll(&tampered, "laptop").await.unwrap_err();
    assert!(err.contains("does not match the token"), "{err}");
    assert!(
        err.contains(&wrong) && err.contains(&sat.ca.pin().to_string()),
        "names both pins: {err}"
    );
    // The refused attempt did not use the token up.
    enroll(&token, "laptop").await.unwrap();
}

#[tokio::test]
async fn impostor_with_another_ca_for_the_same_name_refused() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let impostor = Satellite::start("sat-1", ClientAuth::Optional).await;
    // A token of the real satellite pointed at the impostor's address.
    let token: Token = sat.token(TokenOptions::default()).parse().unwrap();
    let redirected = Token {
        addr: impostor.addr.to_string(),
        ..token.clone()
    };
    let err = enroll(&redirected.to_string(), "laptop").await.unwrap_err();
    assert!(err.contains("does not match the token"), "{err}");

    // An enrolled client trusting the real CA refuses the impostor too.
    let (ca, identity) = enroll(&token.to_string(), "laptop").await.unwrap();
    let err = explained(
        &hello(&ca, Some(&identity), impostor.addr)
            .await
            .unwrap_err(),
    );
    assert!(
        err.contains("not signed by the satellite's CA stored at enrollment"),
        "{err}"
    );
}

#[tokio::test]
async fn token_refusals_are_distinct() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let token: Token = sat.token(TokenOptions::default()).parse().unwrap();
    let wrong_secret = Token {
        secret: "0".repeat(32),
        ..token.clone()
    };
    let err = enroll(&wrong_secret.to_string(), "laptop")
        .await
        .unwrap_err();
    assert!(err.contains("the secret does not match"), "{err}");

    enroll(&token.to_string(), "laptop").await.unwrap();
    let err = enroll(&token.to_string(), "laptop").await.unwrap_err();
    assert!(err.contains("was already used (1 use(s) allowed)"), "{err}");

    let expired = sat.token(TokenOptions {
        ttl: Duration::ZERO,
        ..TokenOptions::default()
    });
    let err = enroll(&expired, "laptop").await.unwrap_err();
    assert!(err.contains("expired on"), "{err}");

    let revoked = sat.token(TokenOptions::default());
    let id = revoked.parse::<Token>().unwrap().id;
    sat.tokens.revoke(&id, SystemTime::now()).unwrap();
    let err = enroll(&revoked, "laptop").await.unwrap_err();
    assert!(err.contains("was revoked on"), "{err}");

    let pull = sat.token(TokenOptions {
        kind: TokenKind::Pull,
        ..TokenOptions::default()
    });
    let err = enroll(&pull, "laptop").await.unwrap_err();
    assert!(err.contains("is a pull token"), "{err}");

    let err = enroll("berth-nonsense", "laptop").await.unwrap_err();
    assert!(err.contains("malformed"), "{err}");
}

#[tokio::test]
async fn revoked_client_refused_at_handshake() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let (ca, identity) = enroll(&sat.token(TokenOptions::default()), "laptop")
        .await
        .unwrap();
    assert_eq!(
        hello(&ca, Some(&identity), sat.addr).await.unwrap(),
        "laptop"
    );

    // Revoked through another handle on the file, as `berth satellite clients revoke` would.
    let info = identity.info().unwrap();
    sat.revocations()
        .revoke(&info, "laptop stolen", SystemTime::now())
        .unwrap();
    let refusal = sat
        .revocations()
        .check(&identity.chain().unwrap()[0], SystemTime::now())
        .unwrap_err();
    assert!(
        refusal
            .to_string()
            .starts_with("certificate for client laptop was revoked on"),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("laptop stolen"), "{refusal}");

    let err = hello(&ca, Some(&identity), sat.addr).await.unwrap_err();
    let why = explain_refusal(&err).unwrap_or_else(|| panic!("no explanation for {err}"));
    assert!(why.contains("revoked"), "{why}");
    // Another client is still served.
    let (_, other) = enroll(&sat.token(TokenOptions::default()), "ci")
        .await
        .unwrap();
    assert_eq!(hello(&ca, Some(&other), sat.addr).await.unwrap(), "ci");
}

#[tokio::test]
async fn expired_client_refused_at_handshake() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let key = ClientKey::generate().unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let past = Validity {
        not_before: now - 31 * day,
        not_after: now - day,
    };
    let issued = sat
        .ca
        .sign_client_csr(&key.csr_pem("laptop").unwrap(), "laptop", past)
        .unwrap();
    let identity = key.into_identity(issued.cert_pem);

    let refusal = sat
        .revocations()
        .check(&identity.chain().unwrap()[0], now)
        .unwrap_err();
    assert!(
        refusal
            .to_string()
            .starts_with("certificate for client laptop expired on"),
        "{refusal}"
    );
    assert!(refusal.to_string().contains("let it renew"), "{refusal}");

    let err = hello(sat.ca.cert_der(), Some(&identity), sat.addr)
        .await
        .unwrap_err();
    let why = explain_refusal(&err).unwrap_or_else(|| panic!("no explanation for {err}"));
    assert!(why.contains("expired"), "{why}");
}

#[tokio::test]
async fn renewal_once_half_used() {
    let sat = Satellite::start("sat-1", ClientAuth::Optional).await;
    let key = ClientKey::generate().unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    // Issued 16 days ago for 30 days: still valid, past half.
    let old = Validity {
        not_before: now - 16 * day,
        not_after: now + 14 * day,
    };
    let issued = sat
        .ca
        .sign_client_csr(&key.csr_pem("laptop").unwrap(), "laptop", old)
        .unwrap();
    let identity = key.into_identity(issued.cert_pem);
    assert!(needs_renewal(&identity.chain().unwrap()[0], now).unwrap());

    let fresh_key = ClientKey::generate().unwrap();
    let config =
        client_config(ServerTrust::Ca(sat.ca.cert_der().clone()), Some(&identity)).unwrap();
    let request = json!({ "renew": { "csr": fresh_key.csr_pem("laptop").unwrap() } });
    let reply = call(config, sat.addr, request).await.unwrap();
    let renewed = fresh_key.into_identity(reply["cert"].as_str().unwrap().to_owned());
    assert!(!needs_renewal(&renewed.chain().unwrap()[0], now).unwrap());
    assert_ne!(renewed.info().unwrap().serial, issued.info.serial);
    assert_eq!(
        hello(sat.ca.cert_der(), Some(&renewed), sat.addr)
            .await
            .unwrap(),
        "laptop"
    );
}
