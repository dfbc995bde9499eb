//! Token verification through the real gateway over TLS: asymmetric keys by
//! `kid` (PEM and JWKS), rotation, every claim check, algorithm confusion,
//! oversized and malformed tokens, `scope` roles, and the verified-token cache.
//! Every refusal must be `401 unauthorized`, never a 500.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::{Value, json};

use crate::harness::{Options, TestGateway, metric, spawn_gateway_with};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "switchboard-it";
const LIFETIME_MAX_S: u64 = 7200;
const ACCOUNT: &str = "/v1/accounts/auth-probe";

/// A key pair made at test time: the gateway gets the public half.
struct Pair {
    private: EncodingKey,
    public_pem: String,
}

impl Pair {
    fn generate(alg: &'static rcgen::SignatureAlgorithm) -> Self {
        let kp = rcgen::KeyPair::generate_for(alg).expect("generate key pair");
        let pem = kp.serialize_pem();
        let private = if alg == &rcgen::PKCS_RSA_SHA256 {
            EncodingKey::from_rsa_pem(pem.as_bytes())
        } else if alg == &rcgen::PKCS_ED25519 {
            EncodingKey::from_ed_pem(pem.as_bytes())
        } else {
            EncodingKey::from_ec_pem(pem.as_bytes())
        }
        .expect("encoding key");
        Self {
            private,
            public_pem: kp.public_key_pem(),
        }
    }
}

/// Keys and the files that name them, made once per test process (RSA
/// generation is slow in a debug build).
struct Keys {
    dir: PathBuf,
    rsa: Pair,
    ec_old: Pair,
    ec_new: Pair,
    ed: Pair,
    jwks_rsa: Pair,
    jwks_ed: Pair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchboard-it-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let keys = Keys {
            rsa: Pair::generate(&rcgen::PKCS_RSA_SHA256),
            ec_old: Pair::generate(&rcgen::PKCS_ECDSA_P256_SHA256),
            ec_new: Pair::generate(&rcgen::PKCS_ECDSA_P256_SHA256),
            ed: Pair::generate(&rcgen::PKCS_ED25519),
            jwks_rsa: Pair::generate(&rcgen::PKCS_RSA_SHA256),
            jwks_ed: Pair::generate(&rcgen::PKCS_ED25519),
            dir,
        };
        for (name, pair) in [
            ("rsa", &keys.rsa),
            ("ec-old", &keys.ec_old),
            ("ec-new", &keys.ec_new),
            ("ed", &keys.ed),
        ] {
            std::fs::write(keys.dir.join(format!("{name}.pem")), &pair.public_pem)
                .expect("write public key");
        }
        let jwk = |kid: &str, alg: Algorithm, pem: &str| {
            let key = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                _ => DecodingKey::from_ed_pem(pem.as_bytes()),
            }
            .expect("public key");
            let mut jwk = Jwk::from_decoding_key(&key, Some(alg)).expect("jwk");
            jwk.common.key_id = Some(kid.to_owned());
            jwk
        };
        let set = JwkSet {
            keys: vec![
                jwk("jwks-rsa", Algorithm::RS256, &keys.jwks_rsa.public_pem),
                jwk("jwks-ed", Algorithm::EdDSA, &keys.jwks_ed.public_pem),
            ],
        };
        std::fs::write(
            keys.dir.join("jwks.json"),
            serde_json::to_string(&set).expect("jwks json"),
        )
        .expect("write jwks");
        keys
    })
}

/// `[auth]` with every key, issuer, audience and a lifetime cap.
fn auth_toml() -> String {
    let dir = &keys().dir;
    let key = |kid: &str, alg: &str, file: &str| {
        format!(
            "[[auth.keys]]\nkid = \"{kid}\"\nalgorithm = \"{alg}\"\npublic_key = \"{}\"\n",
            dir.join(file).display()
        )
    };
    format!(
        "[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\ntoken_lifetime_max_s = {LIFETIME_MAX_S}\n\
         jwks_file = \"{jwks}\"\n{}{}{}{}",
        key("rsa-1", "RS256", "rsa.pem"),
        key("ec-old", "ES256", "ec-old.pem"),
        key("ec-new", "ES256", "ec-new.pem"),
        key("ed-1", "EdDSA", "ed.pem"),
        jwks = dir.join("jwks.json").display(),
    )
}

/// A gateway with every test key and an account to read, `layer` over them.
async fn gateway(layer: &str) -> TestGateway {
    let gw = spawn_gateway_with(Options {
        layers: vec![auth_toml(), layer.into()],
        ..Options::default()
    })
    .await;
    gw.account("auth-probe", "alice", "EUR", 100).await;
    gw
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Good claims for the probe route, with `patch` applied (`null` removes).
fn claims(patch: Value) -> Value {
    let now = now();
    let mut c = json!({
        "sub": "alice", "roles": ["transact"], "iss": ISSUER, "aud": AUDIENCE,
        "iat": now, "exp": now + 600,
    });
    let map = c.as_object_mut().expect("object");
    for (k, v) in patch.as_object().expect("patch object") {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    c
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// A hand-built token: any header, any claims, any signature.
fn raw(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

async fn assert_ok(gw: &TestGateway, what: &str, token: &str) {
    let r = gw.get(ACCOUNT, token).await;
    assert_eq!(r.status, 200, "{what}: {:?}", r.json);
    assert_eq!(r.json["balance"], 100, "{what}");
}

/// 401 `unauthorized`, counted under `reason` (the gateway's own label, from
/// `AuthError::reason`), so a refusal for the wrong cause does not pass.
async fn assert_refused(gw: &TestGateway, what: &str, token: &str, reason: &str) {
    let sample = format!("switchboard_requests_denied_total{{reason=\"{reason}\"}}");
    let before = metric(&gw.ops_get("/metrics").await.1, &sample);
    let r = gw.get(ACCOUNT, token).await;
    assert_eq!(
        (r.status, r.code()),
        (401, "unauthorized"),
        "{what}: {:?}",
        r.json
    );
    let after = metric(&gw.ops_get("/metrics").await.1, &sample);
    assert_eq!(after - before, 1.0, "{what}: refused, but not as {reason}");
    assert_says_why(what, &r, reason);
}

/// RFC 6750 §3: the challenge and the body say why, in one of three words
/// (missing, expired / not valid yet, invalid), and nothing about keys,
/// signatures or which claim failed.
fn assert_says_why(what: &str, r: &crate::harness::Reply, reason: &str) {
    let challenge = r.header("www-authenticate").unwrap_or_default();
    let message = r.json["error"]["message"].as_str().unwrap_or_default();
    let why = match reason {
        "missing" => {
            assert_eq!(
                challenge, r#"Bearer realm="switchboard""#,
                "{what}: no error code (RFC 6750 3.1)"
            );
            assert_eq!(message, "a bearer token is required", "{what}");
            return;
        }
        "expired" => "the bearer token has expired",
        "not_yet_valid" => "the bearer token is not valid yet",
        _ => "the bearer token is invalid",
    };
    assert_eq!(
        challenge,
        format!(r#"Bearer realm="switchboard", error="invalid_token", error_description="{why}""#),
        "{what}"
    );
    assert_eq!(message, why, "{what}: the body says the same");
    for word in [
        "kid",
        "key",
        "signature",
        "algorithm",
        "issuer",
        "audience",
        "claim",
        "lifetime",
    ] {
        assert!(
            !challenge.to_lowercase().contains(word) && !message.to_lowercase().contains(word),
            "{what}: the refusal names {word:?}: {challenge} / {message}"
        );
    }
}

/// Each kind of 401 says why in `WWW-Authenticate` and the body, a 403 names
/// `insufficient_scope`, over a real TLS connection.
#[tokio::test]
async fn a_401_says_why_in_the_challenge_and_the_body() {
    let k = keys();
    let gw = gateway("").await;
    let url = format!("{}{ACCOUNT}", gw.base);
    let send = |auth: Option<String>| {
        let mut req = gw.client.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        async move { crate::harness::read(req.send().await.expect("send")).await }
    };
    let r = send(None).await;
    assert_eq!(r.status, 401);
    assert_says_why("no Authorization header", &r, "missing");
    let r = send(Some("Basic YWxpY2U6cHc=".into())).await;
    assert_says_why("another scheme", &r, "missing");
    let expired = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &k.rsa.private,
        &claims(json!({"exp": now() - 600})),
    );
    let r = send(Some(format!("Bearer {expired}"))).await;
    assert_says_why("expired", &r, "expired");
    // One token's header and claims with another's signature.
    let good = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &k.rsa.private,
        &claims(json!({})),
    );
    let other = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &k.rsa.private,
        &claims(json!({"sub": "bob"})),
    );
    let (signed, _) = good.rsplit_once('.').expect("jwt");
    let (_, signature) = other.rsplit_once('.').expect("jwt");
    let forged = format!("{signed}.{signature}");
    let r = send(Some(format!("Bearer {forged}"))).await;
    assert_says_why("a bad signature", &r, "bad_signature");
    let unknown = sign(
        Algorithm::RS256,
        Some("nobody"),
        &k.rsa.private,
        &claims(json!({})),
    );
    let r = send(Some(format!("Bearer {unknown}"))).await;
    assert_says_why("an unknown kid", &r, "unknown_kid");
    let r = send(Some("Bearer not.a.token".into())).await;
    assert_says_why("garbage", &r, "malformed");

    let auditorless = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &k.rsa.private,
        &claims(json!({"roles": ["operator"]})),
    );
    let r = send(Some(format!("Bearer {auditorless}"))).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.json);
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            r#"Bearer realm="switchboard", error="insufficient_scope", error_description="the token lacks the role this route needs""#
        )
    );
}

#[tokio::test]
async fn rs256_es256_eddsa_and_jwks_keys_are_accepted_by_kid() {
    let k = keys();
    let gw = gateway("").await;
    let c = claims(json!({}));
    let cases = [
        ("RS256 PEM", Algorithm::RS256, "rsa-1", &k.rsa),
        ("ES256 PEM", Algorithm::ES256, "ec-old", &k.ec_old),
        ("EdDSA PEM", Algorithm::EdDSA, "ed-1", &k.ed),
        ("RS256 JWKS", Algorithm::RS256, "jwks-rsa", &k.jwks_rsa),
        ("EdDSA JWKS", Algorithm::EdDSA, "jwks-ed", &k.jwks_ed),
    ];
    for (what, alg, kid, pair) in cases {
        assert_ok(&gw, what, &sign(alg, Some(kid), &pair.private, &c)).await;
    }
    // `aud` may be a list that includes us.
    let aud_list = claims(json!({"aud": ["other", AUDIENCE]}));
    let token = sign(
        Algorithm::ES256,
        Some("ec-old"),
        &k.ec_old.private,
        &aud_list,
    );
    assert_ok(&gw, "aud list", &token).await;
    // The dev secret still works for kid-less HS256 tokens (with iss/aud).
    assert_ok(&gw, "dev HS256", &gw.token("alice", &["transact"])).await;
    // Ownership still applies after the signature: bob does not see alice's account.
    let bob = claims(json!({"sub": "bob"}));
    let bob = sign(Algorithm::RS256, Some("rsa-1"), &k.rsa.private, &bob);
    assert_eq!(gw.get(ACCOUNT, &bob).await.status, 404);
}

#[tokio::test]
async fn old_and_new_keys_are_both_accepted_during_rotation() {
    let k = keys();
    let gw = gateway("").await;
    let c = claims(json!({}));
    let old = sign(Algorithm::ES256, Some("ec-old"), &k.ec_old.private, &c);
    let new = sign(Algorithm::ES256, Some("ec-new"), &k.ec_new.private, &c);
    assert_ok(&gw, "old kid", &old).await;
    assert_ok(&gw, "new kid", &new).await;
    // Each kid verifies with its own key only.
    let crossed = sign(Algorithm::ES256, Some("ec-old"), &k.ec_new.private, &c);
    assert_refused(&gw, "new key, old kid", &crossed, "bad_signature").await;
}

#[tokio::test]
async fn time_issuer_audience_and_lifetime_are_enforced() {
    let k = keys();
    let gw = gateway("").await;
    let now = now();
    let max = LIFETIME_MAX_S;
    let cases = [
        ("expired", json!({"exp": now - 600}), "expired"),
        ("not yet valid", json!({"nbf": now + 600}), "not_yet_valid"),
        (
            "wrong issuer",
            json!({"iss": "https://evil.test"}),
            "issuer",
        ),
        ("no issuer", json!({"iss": null}), "issuer"),
        ("wrong audience", json!({"aud": "someone-else"}), "audience"),
        ("no audience", json!({"aud": null}), "audience"),
        ("no exp", json!({"exp": null}), "claims"),
        (
            "lifetime over the max",
            json!({"exp": now + max + 600}),
            "lifetime",
        ),
        (
            "lifetime over the max, no iat",
            json!({"iat": null, "exp": now + max + 600}),
            "lifetime",
        ),
        (
            "short iat..exp, but far in the future",
            json!({"iat": now + 2 * max, "exp": now + 2 * max + 60}),
            "lifetime",
        ),
    ];
    for (what, patch, reason) in cases {
        let token = sign(
            Algorithm::RS256,
            Some("rsa-1"),
            &k.rsa.private,
            &claims(patch),
        );
        assert_refused(&gw, what, &token, reason).await;
    }
    let token = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &k.rsa.private,
        &claims(json!({})),
    );
    assert_ok(&gw, "correct iss/aud within the lifetime", &token).await;
}

/// `auth.leeway_s` on both sides of `exp` and `nbf`: a token expired (or
/// not yet valid) by less than the leeway passes, by more is refused; and a
/// cached token gets the same leeway as a fresh one.
#[tokio::test]
async fn the_clock_leeway_accepts_a_token_just_expired_and_refuses_one_past_it() {
    const LEEWAY_S: u64 = 30;
    let k = keys();
    let gw = gateway(&format!(
        "[auth]\nleeway_s = {LEEWAY_S}\ncache_entries_max = 100\n"
    ))
    .await;
    let now = now();
    let token = |patch: Value| {
        sign(
            Algorithm::RS256,
            Some("rsa-1"),
            &k.rsa.private,
            &claims(patch),
        )
    };
    // 10 s margins either side: the test's clock and the gateway's are one.
    let within = token(json!({"iat": now - 600, "exp": now - (LEEWAY_S - 10)}));
    assert_ok(&gw, "expired within the leeway", &within).await;
    assert_ok(&gw, "expired within the leeway (cached)", &within).await;
    let past = token(json!({"iat": now - 600, "exp": now - (LEEWAY_S + 10)}));
    assert_refused(&gw, "expired past the leeway", &past, "expired").await;
    let early = token(json!({"nbf": now + (LEEWAY_S - 10)}));
    assert_ok(&gw, "not yet valid, within the leeway", &early).await;
    let too_early = token(json!({"nbf": now + (LEEWAY_S + 10)}));
    assert_refused(
        &gw,
        "not yet valid, past the leeway",
        &too_early,
        "not_yet_valid",
    )
    .await;
}

#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let k = keys();
    let gw = gateway("").await;
    let c = claims(json!({}));
    // The RSA public key, as an attacker would find it, used as an HMAC secret.
    let rsa_as_secret = EncodingKey::from_secret(k.rsa.public_pem.as_bytes());
    let none = json!({"alg": "none", "typ": "JWT"});
    let none_kid = json!({"alg": "none", "kid": "rsa-1"});
    let crit = json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"], "exp": 1});
    let cases = [
        ("alg none", raw(&none, &c, ""), "algorithm"),
        ("alg none with a kid", raw(&none_kid, &c, ""), "algorithm"),
        (
            "HS256 with the RSA PEM as secret, RSA kid",
            sign(Algorithm::HS256, Some("rsa-1"), &rsa_as_secret, &c),
            "algorithm",
        ),
        (
            // Only the dev secret verifies kid-less HS256, and the PEM is not it.
            "HS256 with the RSA PEM as secret, no kid",
            sign(Algorithm::HS256, None, &rsa_as_secret, &c),
            "bad_signature",
        ),
        (
            "ES256 token under an RSA kid",
            sign(Algorithm::ES256, Some("rsa-1"), &k.ec_old.private, &c),
            "algorithm",
        ),
        (
            "RS256 token under an EC kid",
            sign(Algorithm::RS256, Some("ec-old"), &k.rsa.private, &c),
            "algorithm",
        ),
        (
            "RS256 token without a kid",
            sign(Algorithm::RS256, None, &k.rsa.private, &c),
            "algorithm",
        ),
        (
            "PS256 with the right RSA key",
            sign(Algorithm::PS256, Some("rsa-1"), &k.rsa.private, &c),
            "algorithm",
        ),
        ("unknown crit extension", raw(&crit, &c, "AA"), "malformed"),
    ];
    for (what, token, reason) in &cases {
        assert_refused(&gw, what, token, reason).await;
    }
}

#[tokio::test]
async fn forged_malformed_and_oversized_tokens_are_refused() {
    let k = keys();
    let gw = gateway("").await;
    let c = claims(json!({}));
    let good = sign(Algorithm::RS256, Some("rsa-1"), &k.rsa.private, &c);
    let (signed, signature) = good.rsplit_once('.').expect("three parts");
    // Another key's valid signature over the same header and claims.
    let other = sign(Algorithm::RS256, Some("rsa-1"), &k.jwks_rsa.private, &c);
    let other_signature = other.rsplit_once('.').expect("three parts").1;
    // The same signature over claims changed to another client.
    let header = signed.split('.').next().expect("header");
    let mallory = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "mallory"})).to_string());
    let huge = |bytes: usize| {
        let c = claims(json!({"pad": "x".repeat(bytes)}));
        sign(Algorithm::RS256, Some("rsa-1"), &k.rsa.private, &c)
    };
    let short = &signature[..(signature.len() / 4 - 1) * 4];
    let unknown = sign(Algorithm::RS256, Some("nope"), &k.rsa.private, &c);
    let cases = [
        (
            "bad signature",
            format!("{signed}.{other_signature}"),
            "bad_signature",
        ),
        (
            "tampered claims",
            format!("{header}.{mallory}.{signature}"),
            "bad_signature",
        ),
        ("unknown kid", unknown, "unknown_kid"),
        // Cut at a base64 quantum inside the signature: decodes, but no longer verifies.
        (
            "truncated signature",
            format!("{signed}.{short}"),
            "bad_signature",
        ),
        (
            "truncated mid-token",
            good[..good.len() / 2].to_owned(),
            "malformed",
        ),
        ("two parts", signed.to_owned(), "malformed"),
        ("four parts", format!("{good}.e30"), "malformed"),
        ("not base64", "%%%.%%%.%%%".to_owned(), "malformed"),
        ("over 8 KiB", huge(9 * 1024), "too_large"),
    ];
    for (what, token, reason) in &cases {
        assert_refused(&gw, what, token, reason).await;
    }
    // A 100 KB payload (136 KB encoded) fits the head limit (256 KiB) and is
    // refused by auth, as JSON.
    assert_refused(&gw, "100 KB payload", &huge(100 * 1024), "too_large").await;
    assert_ok(&gw, "the gateway still serves", &good).await;
}

#[tokio::test]
async fn claims_of_the_wrong_shape_are_refused() {
    let k = keys();
    let gw = gateway("").await;
    let sign_ed = |patch: Value| {
        sign(
            Algorithm::EdDSA,
            Some("ed-1"),
            &k.ed.private,
            &claims(patch),
        )
    };
    let cases = [
        ("missing sub", json!({"sub": null})),
        ("numeric sub", json!({"sub": 42})),
        ("empty sub", json!({"sub": ""})),
        ("roles as a string", json!({"roles": "transact"})),
        ("roles of numbers", json!({"roles": [1]})),
        ("roles as an object", json!({"roles": {"transact": true}})),
        ("exp as a string", json!({"exp": "tomorrow"})),
    ];
    for (what, patch) in cases {
        assert_refused(&gw, what, &sign_ed(patch), "claims").await;
    }
    // Unknown role names are ignored, not an error.
    let token = sign_ed(json!({"roles": ["transact", "superuser"]}));
    assert_ok(&gw, "unknown role ignored", &token).await;
    let r = gw
        .get(ACCOUNT, &sign_ed(json!({"roles": ["superuser"]})))
        .await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.json);
}

#[tokio::test]
async fn scope_roles_are_read_when_configured() {
    let k = keys();
    let gw = gateway("[auth]\nroles_claim = \"scope\"\n").await;
    let sign_ec = |patch: Value| {
        let c = claims(patch);
        sign(Algorithm::ES256, Some("ec-new"), &k.ec_new.private, &c)
    };
    let scope = json!({"sub": "auditor-1", "roles": null, "scope": "openid auditor"});
    assert_ok(&gw, "scope string", &sign_ec(scope)).await;
    // The `roles` claim means nothing under scope roles.
    let roles = json!({"sub": "auditor-1", "roles": ["auditor"]});
    let r = gw.get(ACCOUNT, &sign_ec(roles)).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{:?}", r.json);
    let array = json!({"sub": "auditor-1", "scope": ["auditor"]});
    assert_refused(&gw, "scope as an array", &sign_ec(array), "claims").await;
}

#[tokio::test]
async fn cached_tokens_are_still_refused_once_expired() {
    let k = keys();
    let gw = gateway("[auth]\nleeway_s = 0\ncache_entries_max = 100\n").await;
    let exp = now() + 2;
    let c = claims(json!({"exp": exp}));
    let token = sign(Algorithm::ES256, Some("ec-old"), &k.ec_old.private, &c);
    assert_ok(&gw, "first use", &token).await;
    assert!(
        gw.state.auth.load().cache_len() >= 1,
        "the token was cached"
    );
    assert_ok(&gw, "second use (cached)", &token).await;
    // Past exp (a whole second, as exp has second resolution).
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_refused(&gw, "expired after caching", &token, "expired").await;
}

/// Every route with every role: allowed exactly where `ROUTES` says.
#[tokio::test]
async fn each_route_admits_exactly_the_roles_the_table_names() {
    use switchboard::domain::Role;
    use switchboard::edge::ROUTES;

    let sims = crate::harness::spawn_sims(1).await;
    let gw = spawn_gateway_with(Options {
        switches: crate::harness::switch_list(&sims),
        ..Options::default()
    })
    .await;
    gw.account("rm-1", "role-tester", "EUR", 1_000).await;
    for (i, route) in ROUTES.iter().enumerate() {
        for role in [Role::Transact, Role::Auditor, Role::Operator] {
            let token = gw.token("role-tester", &[role.as_str()]);
            let path = route.path.replace("{id}", "rm-1");
            let url = format!("{}{path}", gw.base);
            let body = if path.starts_with("/v1/transactions") {
                crate::harness::debit(&format!("rm-{i}-{}", role.as_str()), "rm-1", 1)
            } else {
                crate::harness::account_body(
                    &format!("rm-{i}-{}", role.as_str()),
                    "role-tester",
                    "EUR",
                    0,
                )
            };
            let request = gw
                .client
                .request(route.method.clone(), &url)
                .bearer_auth(&token);
            let request = if route.method == http::Method::POST {
                request.json(&body)
            } else {
                request
            };
            let r = crate::harness::read(request.send().await.unwrap()).await;
            if route.roles.contains(&role) {
                assert!(
                    r.status != 401 && r.status != 403,
                    "{} {} as {}: {} {:?}",
                    route.method,
                    route.path,
                    role.as_str(),
                    r.status,
                    r.json
                );
            } else {
                assert_eq!(
                    (r.status, r.code()),
                    (403, "forbidden"),
                    "{} {} as {}",
                    route.method,
                    route.path,
                    role.as_str()
                );
            }
        }
        // No token at all: 401 everywhere.
        let path = route.path.replace("{id}", "rm-1");
        let r = crate::harness::read(
            gw.client
                .request(route.method.clone(), format!("{}{path}", gw.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (401, "unauthorized"),
            "{}",
            route.path
        );
    }
}

/// Rotation without a restart: the key set reloads with the config file.
#[tokio::test]
async fn the_key_set_reloads_with_the_config_file() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    let write = |kids: &[(&str, &str)]| {
        let mut text = format!("[auth]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n");
        for (kid, pem) in kids {
            text.push_str(&format!(
                "[[auth.keys]]\nkid = \"{kid}\"\nalgorithm = \"ES256\"\npublic_key = \"{}\"\n",
                k.dir.join(pem).display()
            ));
        }
        std::fs::write(&file, text).unwrap();
    };
    write(&[("ec-old", "ec-old.pem")]);
    let gw = spawn_gateway_with(Options {
        config_file: Some(file.clone()),
        ..Options::default()
    })
    .await;
    gw.account("auth-probe", "alice", "EUR", 100).await;
    let c = claims(json!({}));
    let old = sign(Algorithm::ES256, Some("ec-old"), &k.ec_old.private, &c);
    let new = sign(Algorithm::ES256, Some("ec-new"), &k.ec_new.private, &c);
    assert_ok(&gw, "old kid before rotation", &old).await;
    assert_refused(&gw, "new kid before rotation", &new, "unknown_kid").await;

    // Both live: old and new tokens pass.
    write(&[("ec-old", "ec-old.pem"), ("ec-new", "ec-new.pem")]);
    crate::harness::eventually(Duration::from_secs(10), "the new key is loaded", || async {
        gw.get(ACCOUNT, &new).await.status == 200
    })
    .await;
    assert_ok(&gw, "old kid during rotation", &old).await;

    // The old key retired: its tokens stop working at once (no stale cache).
    write(&[("ec-new", "ec-new.pem")]);
    crate::harness::eventually(
        Duration::from_secs(10),
        "the old key is retired",
        || async { gw.get(ACCOUNT, &old).await.status == 401 },
    )
    .await;
    assert_ok(&gw, "new kid after rotation", &new).await;

    // A key file that does not load rejects the whole reload.
    std::fs::write(
        &file,
        "[[auth.keys]]\nkid = \"broken\"\nalgorithm = \"ES256\"\npublic_key = \"/nonexistent.pem\"\n",
    )
    .unwrap();
    crate::harness::eventually(
        Duration::from_secs(10),
        "the broken key set is rejected",
        || async {
            gw.metric("switchboard_config_reloads_total{result=\"rejected\"}")
                .await
                >= 1.0
        },
    )
    .await;
    assert_ok(&gw, "new kid after a rejected reload", &new).await;
}
