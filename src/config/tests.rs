//! The config's tests: defaults, every key's mistakes named, environment overrides.

use super::*;

const MINIMAL: &str = r#"
    [upstream]
    url = "http://127.0.0.1:8080"
    [oidc]
    issuer = "https://idp.example.com/realms/main"
    [bearer]
    audiences = ["api://my-app"]
"#;

const LOGIN_SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// MINIMAL with browser login on.
fn login_config() -> String {
    "[server]\nlisten = \"127.0.0.1:4180\"\n".to_string()
        + &MINIMAL.replace("[oidc]", "[oidc]\nclient_id = \"web\"")
        + &format!("\n[session]\nsecret = \"{LOGIN_SECRET}\"\n")
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn err(text: &str, env: Vec<(String, String)>) -> ConfigError {
    load_str(text, env).expect_err("config should be refused")
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load_str(MINIMAL, no_env()).unwrap().config;
    assert_eq!(c.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(c.server.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
    assert!(c.server.workers >= 1);
    assert_eq!(c.upstream.as_ref().unwrap().connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.as_ref().unwrap().response_timeout, Duration::from_secs(60));
    assert_eq!(c.bearer.algorithms, ASYMMETRIC_ALGORITHMS);
    assert_eq!(c.bearer.leeway, Duration::from_secs(30));
    assert_eq!(c.bearer.required_claims, vec!["sub"]);
    assert_eq!(c.bearer.issuers.len(), 1);
    assert_eq!(c.bearer.issuers[0].audiences, vec!["api://my-app"]);
    assert_eq!(c.identity.user_claim, "sub");
    assert_eq!(c.identity.pass_token, PassToken::None);
}

#[test]
fn unknown_key_is_named() {
    let e = err(&format!("{MINIMAL}\n[server]\nlistn = \"x\"\n"), no_env());
    assert!(e.to_string().contains("listn"), "{e}");
}

#[test]
fn unknown_key_in_section_is_named_with_its_path() {
    let text = MINIMAL.replace("[bearer]", "[bearer]\naudience = \"x\"");
    let e = err(&text, no_env());
    assert!(e.to_string().contains("audience"), "{e}");
    assert!(e.key.starts_with("bearer"), "{e}");
}

#[test]
fn wrong_type_names_the_key() {
    let text = MINIMAL.replace("audiences = [\"api://my-app\"]", "audiences = 5");
    let e = err(&text, no_env());
    assert_eq!(e.key, "bearer.audiences", "{e}");
}

#[test]
fn bad_duration_names_the_key() {
    let e = err(&format!("{MINIMAL}\n[server]\nshutdown_timeout = \"soon\"\n"), no_env());
    assert_eq!(e.key, "server.shutdown_timeout");
}

#[test]
fn env_overrides_file_values() {
    let env = vec![
        ("PORTCULLIS_SERVER_ADMIN_LISTEN".to_string(), "127.0.0.1:9999".to_string()),
        ("PORTCULLIS_BEARER_AUDIENCES".to_string(), "a, b".to_string()),
        ("PORTCULLIS_BEARER_TOKEN_CACHE_SIZE".to_string(), "7".to_string()),
        ("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER".to_string(), "false".to_string()),
        ("PORTCULLIS_IDENTITY_CLAIM_HEADERS".to_string(), "X-Tenant=tid,X-Org=org".to_string()),
    ];
    let c = load_str(MINIMAL, env).unwrap().config;
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9999");
    assert_eq!(c.bearer.issuers[0].audiences, vec!["a", "b"]);
    assert_eq!(c.bearer.token_cache_size, 7);
    assert!(!c.upstream.as_ref().unwrap().pass_host_header);
    let names: Vec<_> =
        c.identity.claim_headers.iter().map(|(h, c)| (h.as_str(), c.as_str())).collect();
    assert_eq!(names, vec![("x-org", "org"), ("x-tenant", "tid")]);
}

#[test]
fn every_env_key_is_a_real_key() {
    // Setting each documented variable to a plausible value must be accepted by the schema:
    // a key with a variable that the file does not know would fail as an unknown field.
    let mut n = 0;
    for (section, key, kind) in env_keys() {
        n += 1;
        let value = match (section, key, kind) {
            (_, _, Kind::Bool) => "false",
            (_, _, Kind::Int) => "5",
            (_, _, Kind::Map) => "X-A=a",
            (_, "algorithms", _) => "RS256",
            (_, "public_routes", _) => "^/x",
            (_, "trusted_proxies", _) => "10.0.0.0/8, 192.168.1.1",
            ("session", "secret", _) => LOGIN_SECRET,
            ("session", "secret_file", _) => continue,
            ("session", "store", _) => "cookie",
            ("session", "redis_url", _) => "rediss://portcullis:pw@redis.example.com:6380/2",
            ("session", "redis_password_file" | "redis_ca_file", _) => continue, // files: below
            ("session", "redis_key_prefix", _) => "app:",
            ("session", "refresh_lock_lease", _) => "1s",
            ("session", "max_lifetime" | "idle_timeout", _) => "2h",
            ("oidc", "redirect_url" | "post_logout_redirect_url", _) => {
                "https://app.example.com/oauth2/callback"
            }
            ("oidc", "scopes", _) => "openid,email",
            ("oidc", "prefix", _) => "/auth",
            ("upstream", "protocol", _) => "h2c",
            ("forward_auth", "dialect", _) => "nginx",
            ("server", "templates_dir", _) => "/nonexistent",
            ("authorization", "issuers", _) => "https://idp.example.com/realms/main",
            (_, k, _) if k.ends_with("listen") => "127.0.0.1:1",
            (_, k, _)
                if k.ends_with("timeout")
                    || k.ends_with("interval")
                    || k.ends_with("delay")
                    || k == "leeway" =>
            {
                "1s"
            }
            (_, "url", _) => "http://127.0.0.1:1",
            (_, "issuer", _) | (_, "jwks_url", _) => "https://idp.example.com",
            (_, "pass_token", _) => "authorization",
            (_, "format", _) => "json",
            (_, "level", _) => "debug",
            (_, "client_secret_file", _) => continue, // needs a file; tested below
            _ => "x",
        };
        let env = vec![(env_name(section, key), value.to_string())];
        let base = match (section, key) {
            ("session", k) if k.starts_with("redis_") || k == "refresh_lock_lease" => {
                login_config() + "store = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n"
            }
            ("session", _) => login_config(),
            _ => MINIMAL.to_string(),
        };
        let loaded = load_str(&base, env);
        assert!(loaded.is_ok(), "{section}.{key}: {:?}", loaded.err());
        assert!(loaded.unwrap().warnings.is_empty());
    }
    assert!(n >= 35, "only {n} keys can be set from the environment");
    // tables are for the file only
    assert!(env_keys().all(|(s, k, _)| (s, k) != ("bearer", "issuers")));
    assert!(env_keys().all(|(_, k, _)| k != "rules" && k != "claims"));
}

#[test]
fn unknown_env_only_warns() {
    let env = vec![
        ("PORTCULLIS_SERVICE_HOST".to_string(), "10.0.0.1".to_string()),
        ("PORTCULLIS_CONFIG".to_string(), "/etc/p.toml".to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ];
    let loaded = load_str(MINIMAL, env).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].contains("PORTCULLIS_SERVICE_HOST"));
}

#[test]
fn bad_env_value_names_the_variable_and_the_key() {
    let env = vec![("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER".to_string(), "yes".to_string())];
    let e = err(MINIMAL, env);
    assert_eq!(e.key, "upstream.pass_host_header");
    assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_UPSTREAM_PASS_HOST_HEADER"));
    // a value that parses but does not validate
    let env = vec![("PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT".to_string(), "soon".to_string())];
    let e = err(MINIMAL, env);
    assert_eq!(e.key, "server.shutdown_timeout");
    assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT"));
    assert!(e.to_string().contains("set by PORTCULLIS_SERVER_SHUTDOWN_TIMEOUT"), "{e}");
    let env = vec![("PORTCULLIS_BEARER_ALGORITHMS".to_string(), "RS256,HS256".to_string())];
    let e = err(MINIMAL, env);
    assert_eq!(e.key, "bearer.algorithms[1]");
    assert_eq!(e.variable.as_deref(), Some("PORTCULLIS_BEARER_ALGORITHMS"));
    // the file's own mistakes name no variable
    let e = err(&format!("{MINIMAL}\n[server]\nshutdown_timeout = \"soon\"\n"), no_env());
    assert_eq!(e.variable, None);
}

#[test]
fn hmac_and_none_are_refused_as_algorithms() {
    for alg in ["HS256", "none"] {
        let text = MINIMAL.replace("[bearer]", &format!("[bearer]\nalgorithms = [\"{alg}\"]"));
        let e = err(&text, no_env());
        assert_eq!(e.key, "bearer.algorithms[0]", "{e}");
    }
}

#[test]
fn http_issuer_off_loopback_is_refused() {
    let text = MINIMAL.replace("https://idp.example.com", "http://idp.example.com");
    assert_eq!(err(&text, no_env()).key, "oidc.issuer");
    let text = MINIMAL.replace("https://idp.example.com", "http://127.0.0.1:5556");
    assert!(load_str(&text, no_env()).is_ok());
}

#[test]
fn missing_issuer_and_upstream_are_named() {
    assert_eq!(err("[upstream]\nurl = \"http://127.0.0.1:1\"", no_env()).key, "oidc.issuer");
    let text = MINIMAL.replace("url = \"http://127.0.0.1:8080\"", "");
    assert_eq!(err(&text, no_env()).key, "upstream.url");
    // without any [upstream]: no app, forward-auth only; an override makes the section
    let text = MINIMAL.replace("[upstream]\n    url = \"http://127.0.0.1:8080\"", "");
    assert!(load_str(&text, no_env()).unwrap().config.upstream.is_none());
    let env = vec![("PORTCULLIS_UPSTREAM_URL".to_string(), "http://127.0.0.1:9".to_string())];
    assert!(load_str(&text, env).unwrap().config.upstream.is_some());
    let env = vec![("PORTCULLIS_UPSTREAM_CONNECT_TIMEOUT".to_string(), "1s".to_string())];
    let e = load_str(&text, env).unwrap_err();
    assert_eq!((e.key.as_str(), e.variable), ("upstream.url", None));
}

#[test]
fn more_issuers_need_audiences() {
    let text =
        format!("{MINIMAL}\n[[bearer.issuers]]\nissuer = \"https://b.example\"\naudiences = []\n");
    assert_eq!(err(&text, no_env()).key, "bearer.issuers[0].audiences");
}

#[test]
fn unanchored_public_route_warns() {
    let text =
        MINIMAL.replace("[bearer]", "[bearer]\npublic_routes = [\"^/ok\", \"GET=/public/\"]");
    let loaded = load_str(&text, no_env()).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("bearer.public_routes[1]"));
}

#[test]
fn public_routes_parse_method_and_regex() {
    let r = PublicRoute::parse("GET=^/healthz$").unwrap();
    assert!(r.matches(&Method::GET, "/healthz"));
    assert!(!r.matches(&Method::POST, "/healthz"));
    assert!(r.matches(&Method::HEAD, "/healthz"), "HEAD follows GET");
    let r = PublicRoute::parse("HEAD=^/healthz$").unwrap();
    assert!(!r.matches(&Method::GET, "/healthz"), "GET does not follow HEAD");
    assert!(PublicRoute::parse("get=^/healthz$").unwrap_err().contains("upper case"));
    assert!(PublicRoute::parse("Get=^/x").is_err());
    let r = PublicRoute::parse("^/public/").unwrap();
    assert!(r.matches(&Method::DELETE, "/public/x"));
    let text = MINIMAL.replace("[bearer]", "[bearer]\npublic_routes = [\"^/ok\", \"(\"]");
    assert_eq!(err(&text, no_env()).key, "bearer.public_routes[1]");
}

#[test]
fn secret_from_file_is_read_and_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "s3cr3t-value\n").unwrap();
    let text = MINIMAL.replace(
        "[oidc]",
        &format!("[oidc]\nclient_secret_file = {:?}", path.display().to_string()),
    );
    let c = load_str(&text, no_env()).unwrap().config;
    let secret = c.oidc.client_secret.clone().unwrap();
    assert_eq!(secret.expose(), "s3cr3t-value");
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("[redacted]"));
}

#[test]
fn claim_header_cannot_be_a_framing_header() {
    let text =
        format!("{MINIMAL}\n[identity]\nclaim_headers = {{ \"Content-Length\" = \"sub\" }}\n");
    assert!(err(&text, no_env()).key.starts_with("identity.claim_headers"));
}

#[test]
fn rules_are_read_and_their_mistakes_named() {
    let text = format!(
        r#"{MINIMAL}
[authorization]
email_domains = ["example.com"]
[[authorization.rules]]
path = "/admin/"
methods = ["POST", "DELETE"]
groups = ["admins"]
scopes = ["admin:write"]
claims = {{ "realm_access.roles" = ["auditor"] }}
[[authorization.rules]]
path_regex = "^/reports/.*\\.csv$"
issuers = ["https://idp.example.com/realms/main"]
"#
    );
    let c = load_str(&text, no_env()).unwrap().config;
    let p = &c.authorization;
    assert_eq!(p.base.email_domains, vec!["example.com"]);
    assert_eq!(p.rules.len(), 2);
    assert!(matches!(&p.rules[0].path, RulePath::Prefix(x) if x == "/admin"));
    assert_eq!(p.rules[0].methods, vec![Method::POST, Method::DELETE]);
    assert_eq!(p.rules[0].require.claims[0].0, "realm_access.roles");
    assert!(matches!(&p.rules[1].path, RulePath::Regex(_)));
    let bad =
        |rule: &str| err(&format!("{MINIMAL}\n[[authorization.rules]]\n{rule}\n"), no_env()).key;
    assert_eq!(bad("path = \"/admin\""), "authorization.rules[0]");
    assert_eq!(bad("groups = [\"a\"]"), "authorization.rules[0]");
    assert_eq!(bad("path_regex = \"(\"\ngroups = [\"a\"]"), "authorization.rules[0].path_regex");
    assert_eq!(
        bad("path = \"/a\"\npath_regex = \"^/a\"\ngroups = [\"a\"]"),
        "authorization.rules[0]"
    );
    assert!(bad("path = \"/a\"\ngroup = [\"a\"]").starts_with("authorization.rules[0]"));
    assert_eq!(
        bad("path = \"/a\"\nissuers = [\"https://elsewhere.example\"]"),
        "authorization.rules[0].issuers[0]"
    );
    assert_eq!(bad("path = \"/a\"\nscopes = [\"a b\"]"), "authorization.rules[0].scopes[0]");
    assert_eq!(
        bad("path = \"/a\"\nmethods = [\"\"]\ngroups = [\"a\"]"),
        "authorization.rules[0].methods[0]"
    );
    for lower in ["post", "Delete", "GET ", " GET"] {
        assert_eq!(
            bad(&format!("path = \"/a\"\nmethods = [\"GET\", {lower:?}]\ngroups = [\"a\"]")),
            "authorization.rules[0].methods[1]",
            "{lower:?}"
        );
    }
    // the top-level requirements come from the environment too
    let env = vec![("PORTCULLIS_AUTHORIZATION_GROUPS".to_string(), "staff, admins".to_string())];
    let c = load_str(MINIMAL, env).unwrap().config;
    assert_eq!(c.authorization.base.groups, vec!["staff", "admins"]);
}

#[test]
fn login_start_up_errors_name_the_key() {
    let c = load_str(&login_config(), no_env()).unwrap().config;
    let l = c.login.unwrap();
    assert_eq!(l.client_id, "web");
    assert_eq!(l.prefix, "/oauth2");
    assert_eq!(l.scopes, vec!["openid", "email", "profile"]);
    assert!(l.redirect_url.is_none(), "on loopback the redirect URL follows the Host");
    let key = |text: String| err(&text, no_env()).key;
    // [session] without client_id
    assert_eq!(
        key(format!("{MINIMAL}\n[session]\nsecret = \"{LOGIN_SECRET}\"\n")),
        "oidc.client_id"
    );
    // no secret, short or non-random secrets
    let no_secret = login_config().replace(&format!("secret = \"{LOGIN_SECRET}\""), "");
    assert_eq!(key(no_secret), "session.secret");
    let short = login_config().replace(LOGIN_SECRET, "c2hvcnQ=");
    assert_eq!(key(short), "session.secret");
    let zeros =
        login_config().replace(LOGIN_SECRET, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    assert_eq!(key(zeros), "session.secret");
    // the client id as a bearer audience
    let clash = login_config().replace("audiences = [\"api://my-app\"]", "audiences = [\"web\"]");
    assert_eq!(key(clash), "oidc.client_id");
    // a public listener without redirect_url
    let public = login_config().replace("127.0.0.1:4180", "0.0.0.0:4180");
    assert_eq!(key(public), "oidc.redirect_url");
    let http = login_config()
        .replace("[oidc]", "[oidc]\nredirect_url = \"http://app.example.com/oauth2/callback\"");
    assert_eq!(key(http), "oidc.redirect_url");
    let no_openid = login_config().replace("[oidc]", "[oidc]\nscopes = [\"email\"]");
    assert_eq!(key(no_openid), "oidc.scopes");
    // a secret file: one per line, all read
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secrets");
    std::fs::write(&f, format!("{LOGIN_SECRET}\n\nMTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWY=\n"))
        .unwrap();
    let text = login_config().replace(
        &format!("secret = \"{LOGIN_SECRET}\""),
        &format!("secret_file = {:?}", f.display().to_string()),
    );
    let l = load_str(&text, no_env()).unwrap().config.login.unwrap();
    assert_eq!(l.session.secrets.len(), 2);
    assert!(!format!("{l:?}").contains(LOGIN_SECRET));
}

#[test]
fn forward_auth_dialects_the_prefix_without_login_and_a_warning_for_trusting_everyone() {
    let c = load_str(MINIMAL, no_env()).unwrap().config;
    assert_eq!(c.forward_auth.dialect, None);
    assert!(!c.forward_auth.redirect_browsers);
    assert_eq!(c.oidc.prefix, "/oauth2");
    assert!(c.login.is_none());
    for (name, want) in [
        ("nginx", Dialect::Nginx),
        ("traefik", Dialect::Forwarded),
        ("caddy", Dialect::Forwarded),
        ("envoy", Dialect::Envoy),
    ] {
        let text =
            format!("{MINIMAL}\n[forward_auth]\ndialect = \"{name}\"\nredirect_browsers = true\n");
        let c = load_str(&text, no_env()).unwrap().config;
        assert_eq!(c.forward_auth.dialect, Some(want));
        assert!(c.forward_auth.redirect_browsers);
    }
    let e = load_str(&format!("{MINIMAL}\n[forward_auth]\ndialect = \"haproxy\"\n"), no_env());
    assert_eq!(e.unwrap_err().key, "forward_auth.dialect");
    // the prefix exists in bearer-only mode too, and is checked there
    let c = load_str(&MINIMAL.replace("[oidc]", "[oidc]\nprefix = \"/_auth/\""), no_env());
    assert_eq!(c.unwrap().config.oidc.prefix, "/_auth");
    let e = load_str(&MINIMAL.replace("[oidc]", "[oidc]\nprefix = \"/\""), no_env());
    assert_eq!(e.unwrap_err().key, "oidc.prefix");
    // trusting every address is allowed, and said at start-up
    for all in ["0.0.0.0/0", "::/0"] {
        let text = format!("[server]\ntrusted_proxies = [\"{all}\"]\n{MINIMAL}");
        let loaded = load_str(&text, no_env()).unwrap();
        assert!(loaded.warnings.iter().any(|w| w.contains(all)), "{:?}", loaded.warnings);
    }
    let text = format!("[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n{MINIMAL}");
    assert!(load_str(&text, no_env()).unwrap().warnings.is_empty());
}

#[test]
fn hosts_on_rules_and_public_routes() {
    let h = Hosts::parse(
        "k",
        vec!["App.example.com".into(), ".corp.example".into(), "x.example:8443".into()],
    )
    .unwrap();
    let m = |host: &str, scheme: &str| h.matches(Some(&canonical_host(host, scheme)));
    assert!(m("app.EXAMPLE.com", "http"));
    assert!(m("app.example.com:443", "https"), "the default port is no port");
    assert!(m("app.example.com:80", "http"));
    assert!(!m("app.example.com:8080", "http"), "another port is another host");
    assert!(!m("app.example.com.evil", "http"));
    assert!(
        m("a.corp.example", "http") && m("b.a.corp.example:9000", "http"),
        "subdomains, any port"
    );
    assert!(!m("corp.example", "http"), "the domain itself is not its subdomain");
    assert!(!m("evilcorp.example", "http"), "a dot boundary");
    assert!(!h.matches(Some(".corp.example")), "the pattern itself is no subdomain");
    assert_eq!(h.describe(), "app.example.com, .corp.example, x.example:8443");
    assert!(m("x.example:8443", "https") && !m("x.example", "https"));
    assert!(!h.matches(None), "a request naming no host matches no host list");
    assert!(Hosts::default().matches(None) && Hosts::default().matches(Some("any")));
    assert_eq!(canonical_host("[::1]:443", "https"), "[::1]");
    // nothing but a port, or a port after an empty one, is left as it came
    assert_eq!(canonical_host(":80", "http"), ":80");
    assert_eq!(canonical_host("a::80", "http"), "a::80");
    assert_eq!(canonical_host(" A.example:443 ", "http"), "a.example:443");
    assert!(Hosts::parse("k", vec!["[::1]".into()]).unwrap().matches(Some("[::1]")));
    for bad in ["", "a b", "a/b", "http://x", "a@b"] {
        assert_eq!(Hosts::parse("k", vec![bad.into()]).unwrap_err().key, "k[0]", "{bad:?}");
    }

    let text = MINIMAL.replace(
        "[bearer]",
        "[bearer]\npublic_routes = [\"GET=^/healthz$\", { route = \"^/public/\", hosts = [\"docs.example.com\"] }]",
    );
    let c = load_str(&text, no_env()).unwrap().config;
    assert!(c.bearer.public_routes[0].hosts.is_empty());
    assert!(c.bearer.public_routes[1].hosts.matches(Some("docs.example.com")));
    assert!(!c.bearer.public_routes[1].hosts.matches(Some("app.example.com")));
    let empty =
        MINIMAL.replace("[bearer]", "[bearer]\npublic_routes = [{ route = \"^/p/\", hosts = [] }]");
    assert_eq!(err(&empty, no_env()).key, "bearer.public_routes[0].hosts");
    let bad = MINIMAL
        .replace("[bearer]", "[bearer]\npublic_routes = [{ route = \"^/p/\", hosts = [\"a b\"] }]");
    assert_eq!(err(&bad, no_env()).key, "bearer.public_routes[0].hosts[0]");
    // from the environment: strings, for every host
    let env = vec![("PORTCULLIS_BEARER_PUBLIC_ROUTES".to_string(), "^/a/,GET=^/b$".to_string())];
    assert_eq!(load_str(MINIMAL, env).unwrap().config.bearer.public_routes.len(), 2);

    let rules = format!("{MINIMAL}\n[[authorization.rules]]\npath = \"/admin\"\nhosts = [\"app.example.com\"]\ngroups = [\"admins\"]\n");
    let c = load_str(&rules, no_env()).unwrap().config;
    assert!(c.authorization.rules[0].hosts.matches(Some("app.example.com")));
    let bad = rules.replace("[\"app.example.com\"]", "[\"\"]");
    assert_eq!(err(&bad, no_env()).key, "authorization.rules[0].hosts[0]");
}

#[test]
fn pass_id_token_and_skip_auth_preflight() {
    let c = load_str(MINIMAL, no_env()).unwrap().config;
    assert!(!c.identity.pass_id_token && !c.bearer.skip_auth_preflight);
    let text = format!("{MINIMAL}\n[identity]\npass_id_token = true\n");
    assert!(load_str(&text, no_env()).unwrap().config.identity.pass_id_token);
    // both would be the app's Authorization header
    let both = format!("{text}pass_token = \"authorization\"\n");
    assert_eq!(err(&both, no_env()).key, "identity.pass_id_token");
    let text = MINIMAL.replace("[bearer]", "[bearer]\nskip_auth_preflight = true");
    assert!(load_str(&text, no_env()).unwrap().config.bearer.skip_auth_preflight);
}

#[test]
fn shutdown_delay_defaults_to_none_and_is_a_duration() {
    assert!(load_str(MINIMAL, no_env()).unwrap().config.server.shutdown_delay.is_zero());
    let text = format!("[server]\nshutdown_delay = \"5s\"\n{MINIMAL}");
    assert_eq!(
        load_str(&text, no_env()).unwrap().config.server.shutdown_delay,
        Duration::from_secs(5)
    );
    let text = format!("[server]\nshutdown_delay = \"soon\"\n{MINIMAL}");
    assert_eq!(err(&text, no_env()).key, "server.shutdown_delay");
}

#[test]
fn redis_store_keys_defaults_env_and_mistakes_named() {
    let redis = |extra: &str| login_config() + "store = \"redis\"\n" + extra;
    let store = |text: String, env: Vec<(String, String)>| match load_str(&text, env)
        .unwrap()
        .config
        .login
        .unwrap()
        .session
        .store
    {
        StoreConfig::Redis(r) => r,
        StoreConfig::Cookie => panic!("cookie store"),
    };
    // defaults
    let r = store(redis("redis_url = \"redis://127.0.0.1:6379/0\"\n"), no_env());
    assert_eq!(r.key_prefix, "portcullis:");
    assert_eq!(r.timeout, DEFAULT_REDIS_TIMEOUT);
    assert_eq!(r.connect_timeout, DEFAULT_REDIS_CONNECT_TIMEOUT);
    assert_eq!(r.lock_lease, DEFAULT_REFRESH_LOCK_LEASE);
    assert!(!r.url.is_tls() && r.password.is_none() && r.ca_pem.is_none());
    // switching store from the environment needs nothing else
    let env = vec![
        ("PORTCULLIS_SESSION_STORE".to_string(), "redis".to_string()),
        (
            "PORTCULLIS_SESSION_REDIS_URL".into(),
            "rediss://u:hunter2@redis.example.com:6380/3".into(),
        ),
        ("PORTCULLIS_SESSION_REDIS_TIMEOUT".into(), "250ms".into()),
    ];
    let r = store(login_config(), env);
    assert!(r.url.is_tls());
    assert_eq!(r.timeout, Duration::from_millis(250));
    // the password never prints
    let shown = format!("{} {:?} {r:?}", r.url, r.url);
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("rediss://u:***@redis.example.com:6380/3"), "{shown}");
    assert_eq!(r.url.expose().password(), Some("hunter2"));
    // the cookie store stays the default, and redis keys without it are a mistake
    let c = load_str(&login_config(), no_env()).unwrap().config.login.unwrap();
    assert!(matches!(c.session.store, StoreConfig::Cookie));
    let stray = login_config() + "redis_url = \"redis://127.0.0.1:6379\"\n";
    assert_eq!(err(&stray, no_env()).key, "session.redis_url");
    // mistakes name their key, and never echo the URL
    for (extra, key) in [
        ("", "session.redis_url"),
        ("redis_url = \"http://secret:hunter2@127.0.0.1:6379\"\n", "session.redis_url"),
        ("redis_url = \"rediss://secret:hunter2@127.0.0.1:6379/#insecure\"\n", "session.redis_url"),
        ("redis_url = \"redis://secret:hunter2@127.0.0.1:6379/x\"\n", "session.redis_url"),
        (
            "redis_url = \"redis://127.0.0.1\"\nredis_key_prefix = \"{x}\"\n",
            "session.redis_key_prefix",
        ),
        ("redis_url = \"redis://127.0.0.1\"\nredis_timeout = \"0s\"\n", "session.redis_timeout"),
        (
            "redis_url = \"redis://127.0.0.1\"\nrefresh_lock_lease = \"1m\"\n",
            "session.refresh_lock_lease",
        ),
        (
            "redis_url = \"redis://127.0.0.1\"\nredis_ca_file = \"/etc/hostname\"\n",
            "session.redis_ca_file",
        ),
        (
            "redis_url = \"rediss://127.0.0.1\"\nredis_ca_file = \"/nonexistent\"\n",
            "session.redis_ca_file",
        ),
        (
            "redis_url = \"redis://127.0.0.1\"\nredis_password_file = \"/nonexistent\"\n",
            "session.redis_password_file",
        ),
    ] {
        let e = err(&redis(extra), no_env());
        assert_eq!(e.key, key, "{extra}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    // the bounds of the timeouts and the lease, exactly
    for (key, ok, refused) in [
        ("redis_timeout", ["10ms", "60s"], ["9ms", "61s"]),
        ("redis_connect_timeout", ["10ms", "60s"], ["9ms", "61s"]),
        ("refresh_lock_lease", ["100ms", "15s"], ["99ms", "16s"]),
    ] {
        for v in ok {
            let text = redis(&format!("redis_url = \"redis://127.0.0.1\"\n{key} = \"{v}\"\n"));
            assert!(load_str(&text, no_env()).is_ok(), "{key} = {v}");
        }
        for v in refused {
            let text = redis(&format!("redis_url = \"redis://127.0.0.1\"\n{key} = \"{v}\"\n"));
            assert_eq!(err(&text, no_env()).key, format!("session.{key}"), "{key} = {v}");
        }
    }
    let e = err(&login_config().replace("[session]", "[session]\nstore = \"memcached\""), no_env());
    assert_eq!(e.key, "session.store");
    // a password file, and a CA file for rediss://
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
    let text = redis(&format!(
        "redis_url = \"rediss://127.0.0.1:6380\"\nredis_password_file = {:?}\nredis_ca_file = {:?}\n",
        pw.display().to_string(),
        ca.display().to_string()
    ));
    let r = store(text, no_env());
    assert_eq!(r.password.as_ref().map(|p| p.expose()), Some("s3cret"));
    assert!(r.ca_pem.is_some());
    // a CA without TLS is a mistake even when it is a good one; TLS with a file that is no CA
    let plain = redis(&format!(
        "redis_url = \"redis://127.0.0.1:6380\"\nredis_ca_file = {:?}\n",
        ca.display().to_string()
    ));
    assert!(err(&plain, no_env()).to_string().contains("rediss://"));
    let not_pem = redis(&format!(
        "redis_url = \"rediss://127.0.0.1:6380\"\nredis_ca_file = {:?}\n",
        pw.display().to_string()
    ));
    assert!(err(&not_pem, no_env()).to_string().contains("no PEM certificate"));
    let both = redis(&format!(
        "redis_url = \"redis://:pw@127.0.0.1\"\nredis_password_file = {:?}\n",
        pw.display().to_string()
    ));
    assert_eq!(err(&both, no_env()).key, "session.redis_password_file");
}

#[test]
fn session_defaults_and_the_cookie_name_and_domain() {
    let l = load_str(&login_config(), no_env()).unwrap().config.login.unwrap();
    assert_eq!(l.session.max_lifetime, Duration::from_secs(12 * 3600));
    assert_eq!(l.session.idle_timeout, Duration::from_secs(3600));
    assert_eq!(l.session.cookie_name, "_portcullis");
    assert_eq!(l.session.cookie_domain, None);
    let with = |line: &str| login_config().replace("[session]", &format!("[session]\n{line}"));
    for bad in ["cookie_name = \"\"", "cookie_name = \"a b\"", "cookie_name = \"a;b\""] {
        assert_eq!(err(&with(bad), no_env()).key, "session.cookie_name", "{bad}");
    }
    let l = load_str(&with("cookie_name = \"my-app_1\""), no_env()).unwrap().config.login.unwrap();
    assert_eq!(l.session.cookie_name, "my-app_1");
    let l = load_str(&with("cookie_domain = \" \""), no_env()).unwrap().config.login.unwrap();
    assert_eq!(l.session.cookie_domain, None, "a blank domain is none");
    let l =
        load_str(&with("cookie_domain = \"example.com\""), no_env()).unwrap().config.login.unwrap();
    assert_eq!(l.session.cookie_domain.as_deref(), Some("example.com"));
}
