//! Token validation cost: portcullis' cold path next to jsonwebtoken's bare `decode` of the same
//! token (same key, same checks, claims into a JSON map as we need them), and a cached hit.
//! Run: cargo bench --bench token
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::{DecodingKey, Validation};
use portcullis::auth::token::Verifier;
use portcullis::devissuer::{DevIssuer, KeyAlg};
use serde_json::{Map, Value};

const AUD: &str = "api://bench";

fn verifier(dev: &DevIssuer, cache: usize, rt: &tokio::runtime::Runtime) -> Verifier {
    rt.block_on(dev.verifier(AUD, |cfg| cfg.token_cache_size = cache)).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dev =
        rt.block_on(DevIssuer::start(&[KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa])).unwrap();
    let cold = verifier(&dev, 0, &rt);
    let warm = verifier(&dev, 10_000, &rt);

    for kid in dev.kids() {
        let key = dev.key(&kid).unwrap();
        let token = key.sign(jsonwebtoken::Header::new(key.alg), &dev.claims_for("alice", AUD));
        let decoding =
            DecodingKey::from_jwk(&serde_json::from_value(key.jwk.clone()).unwrap()).unwrap();
        let mut validation = Validation::new(key.alg);
        validation.leeway = 30;
        validation.set_issuer(&[dev.issuer()]);
        validation.set_audience(&[AUD]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);

        let mut g = c.benchmark_group(format!("verify/{:?}", key.alg));
        g.bench_function("jsonwebtoken_decode", |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Map<String, Value>>(&token, &decoding, &validation).unwrap()
            })
        });
        g.bench_function("portcullis_cold", |b| {
            b.iter(|| cold.verify(&token).now_or_never().unwrap().unwrap())
        });
        g.finish();
    }

    let token = dev.token_for("alice", AUD);
    warm.verify(&token).now_or_never().unwrap().unwrap();
    c.bench_function("verify/cached_hit", |b| {
        b.iter(|| warm.verify(&token).now_or_never().unwrap().unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
