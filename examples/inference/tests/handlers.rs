//! The demo's logic without sockets: tokenising, the path each answer
//! records, how a failed hop becomes the caller's error, trace context,
//! settings from the environment, the latency model, the load generator's
//! counts. The handlers that need no next hop run on in-memory requests.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use trellis_demo::answer::{Answer, Hop};
use trellis_demo::client::Upstream;
use trellis_demo::failure::{ErrorBody, UpstreamFailure, error_reply};
use trellis_demo::latency::Latency;
use trellis_demo::load::{Counts, Outcome};
use trellis_demo::settings::{Identity, SettingsError, Via, parse_duration, resolve_via};
use trellis_demo::stages::{Role, Stage};
use trellis_demo::text::{format_answer, generate, normalise, query_param, tokenise};
use trellis_demo::trace::{context, parse_traceparent};

// ------------------------------------------------------------------ text

#[test]
fn normalising_lowercases_and_collapses_whitespace() {
    for (input, want) in [
        ("  Hello,\t\tWORLD \n", "hello, world"),
        ("a\u{7}b", "ab"),
        ("ÉCOLE  Öl", "école öl"),
        ("   ", ""),
        ("", ""),
    ] {
        assert_eq!(normalise(input), want, "{input:?}");
    }
}

#[test]
fn tokens_are_words_and_punctuation_with_stable_ids() {
    let tokens = tokenise("what's a mesh? it's 2 things.");
    let texts: Vec<&str> = tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        texts,
        ["what's", "a", "mesh", "?", "it's", "2", "things", "."]
    );
    // The same word, the same id, wherever it is; different words differ.
    let again = tokenise("mesh mesh things");
    assert_eq!(again[0].id, again[1].id);
    assert_eq!(again[0].id, tokens[2].id);
    assert_ne!(again[0].id, again[2].id);
    // Pinned: an id must not change between releases (FNV-1a of "mesh").
    assert_eq!(tokens[2].id, 0xa100_bebc_u32 % 50_000);
    assert!(tokenise("").is_empty());
}

#[test]
fn the_two_models_answer_differently() {
    let tokens = tokenise("what is a service mesh");
    assert_eq!(
        generate("slow", &tokens, 32),
        ["mesh", "service", "a", "is", "what"]
    );
    assert_eq!(generate("fast", &tokens, 32), ["mesh", "service", "what"]);
    assert_eq!(generate("slow", &tokens, 2), ["mesh", "service"]);
    assert_eq!(
        format_answer(&["mesh".into(), "service".into()]),
        "Mesh service."
    );
    assert_eq!(format_answer(&["why?".into()]), "Why?");
    assert_eq!(format_answer(&[]), "");
}

#[test]
fn the_prompt_comes_from_the_query_string() {
    assert_eq!(
        query_param("prompt=hello+world%21&x=1", "prompt").as_deref(),
        Some("hello world!")
    );
    assert_eq!(
        query_param("x=1&prompt=%C3%A9t%C3%A9", "prompt").as_deref(),
        Some("été")
    );
    assert_eq!(
        query_param("prompt=100%", "prompt").as_deref(),
        Some("100%")
    );
    assert_eq!(query_param("prompts=no", "prompt"), None);
}

// ------------------------------------------------------------------ failures

fn reply(failure: UpstreamFailure) -> (StatusCode, ErrorBody) {
    error_reply("gateway", "gateway-0", "inference", "rid-1", &failure)
}

#[test]
fn a_failed_hop_becomes_502_or_503_naming_the_hop_and_reason() {
    let status = |status: u16, reason: Option<&str>, body: &str| UpstreamFailure::Status {
        status,
        reason: reason.map(str::to_owned),
        body: Bytes::from(body.to_string()),
    };
    // (failure, status, reason, upstream status)
    let cases = [
        (
            status(403, Some("rbac_denied"), "RBAC: access denied"),
            502,
            Some("rbac_denied"),
            Some(403),
        ),
        (
            status(503, Some("upstream_connect_failure"), ""),
            503,
            Some("upstream_connect_failure"),
            Some(503),
        ),
        (
            status(504, Some("upstream_timeout"), ""),
            503,
            Some("upstream_timeout"),
            Some(504),
        ),
        (
            status(429, Some("rate_limited"), ""),
            503,
            Some("rate_limited"),
            Some(429),
        ),
        (status(500, None, "boom"), 502, None, Some(500)),
        (
            status(404, Some("route_not_found"), ""),
            502,
            Some("route_not_found"),
            Some(404),
        ),
        (
            UpstreamFailure::Unreachable {
                addr: "127.0.1.1:15001".into(),
                sidecar: true,
                detail: "refused".into(),
            },
            503,
            Some("sidecar_unreachable"),
            None,
        ),
        (
            UpstreamFailure::Unreachable {
                addr: "inference:9090".into(),
                sidecar: false,
                detail: "refused".into(),
            },
            503,
            Some("connect_failure"),
            None,
        ),
        (
            UpstreamFailure::Timeout {
                after: Duration::from_secs(10),
            },
            503,
            Some("timeout"),
            None,
        ),
        (
            UpstreamFailure::Broken {
                detail: "reset".into(),
            },
            503,
            Some("connection_broken"),
            None,
        ),
        (
            UpstreamFailure::BadBody {
                detail: "eof".into(),
            },
            502,
            Some("bad_response"),
            None,
        ),
    ];
    for (failure, want_status, want_reason, want_upstream) in cases {
        let (s, body) = reply(failure.clone());
        assert_eq!(s.as_u16(), want_status, "{failure:?}");
        assert_eq!(body.reason.as_deref(), want_reason, "{failure:?}");
        assert_eq!(body.upstream_status, want_upstream, "{failure:?}");
        assert_eq!(body.hop, "gateway -> inference");
        assert_eq!(body.request_id, "rid-1");
        assert_eq!(body.via, ["gateway-0"]);
        assert!(body.error.contains("inference"), "{}", body.error);
    }
    // The sidecar's refusal is told apart from the app's own error.
    let (_, denied) = reply(status(403, Some("rbac_denied"), ""));
    assert_eq!(
        denied.error,
        "gateway -> inference failed: gateway's sidecar answered 403 (rbac_denied)"
    );
    let (_, app) = reply(status(500, None, ""));
    assert_eq!(
        app.error,
        "gateway -> inference failed: inference answered 500"
    );
}

#[test]
fn an_error_from_a_deeper_hop_keeps_its_hop_and_gains_the_way_back() {
    let deep = ErrorBody {
        error: "inference -> postprocess failed: inference's sidecar answered 503 (fault_injected)"
            .into(),
        hop: "inference -> postprocess".into(),
        upstream_status: Some(503),
        reason: Some("fault_injected".into()),
        request_id: "rid-1".into(),
        via: vec!["inference-v2-0".into()],
    };
    let body = Bytes::from(serde_json::to_vec(&deep).unwrap());
    let (s, e) = error_reply(
        "preprocess",
        "preprocess-0",
        "inference",
        "rid-1",
        &UpstreamFailure::Status {
            status: 503,
            reason: None,
            body: body.clone(),
        },
    );
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e.hop, "inference -> postprocess");
    assert_eq!(e.reason.as_deref(), Some("fault_injected"));
    assert_eq!(e.via, ["inference-v2-0", "preprocess-0"]);
    // A sidecar's reply is the sidecar's, even if the body looked like ours.
    let (_, by_sidecar) = error_reply(
        "preprocess",
        "preprocess-0",
        "inference",
        "rid-1",
        &UpstreamFailure::Status {
            status: 503,
            reason: Some("upstream_per_try_timeout".into()),
            body,
        },
    );
    assert_eq!(by_sidecar.hop, "preprocess -> inference");
    assert_eq!(
        by_sidecar.reason.as_deref(),
        Some("upstream_per_try_timeout")
    );
}

// ------------------------------------------------------------------ trace

#[test]
fn trace_context_is_kept_or_started() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut h = HeaderMap::new();
    let fresh = context(&h, &mut rng);
    assert_eq!(fresh.request_id.len(), 32);
    assert_eq!(fresh.trace_id.len(), 32);
    let (trace, flags) = parse_traceparent(&fresh.outgoing_traceparent).expect("valid traceparent");
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        (fresh.trace_id.as_str(), "01")
    );

    h.insert("x-request-id", HeaderValue::from_static("req-42"));
    h.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
    );
    let kept = context(&h, &mut rng);
    assert_eq!(kept.request_id, "req-42");
    assert_eq!(kept.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        kept.outgoing_traceparent
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(
        kept.outgoing_traceparent.ends_with("-00"),
        "the sampled flag is kept"
    );
    assert!(
        !kept.outgoing_traceparent.contains("00f067aa0ba902b7"),
        "a new span id"
    );

    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f-00f067aa0ba902b7-01",
        "garbage",
    ] {
        assert_eq!(parse_traceparent(bad), None, "{bad}");
    }
}

// ------------------------------------------------------------------ settings

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn the_way_out_is_the_flag_then_http_proxy_then_trellis_outbound() {
    let both = [
        ("HTTP_PROXY", "http://127.0.1.3:15001"),
        ("TRELLIS_OUTBOUND", "127.0.1.3:15001"),
    ];
    assert_eq!(
        resolve_via(None, None, env_of(&both)),
        Ok(Via::Proxy("127.0.1.3:15001".into()))
    );
    assert_eq!(
        resolve_via(None, None, env_of(&[("http_proxy", "http://127.0.0.1:9/")])),
        Ok(Via::Proxy("127.0.0.1:9".into()))
    );
    assert_eq!(
        resolve_via(
            None,
            None,
            env_of(&[("TRELLIS_OUTBOUND", "127.0.1.3:15001")])
        ),
        Ok(Via::Outbound("127.0.1.3:15001".into()))
    );
    assert_eq!(
        resolve_via(None, None, env_of(&[("HTTP_PROXY", "")])),
        Ok(Via::Direct)
    );
    assert_eq!(
        resolve_via(Some("127.0.0.1:7"), None, env_of(&both)),
        Ok(Via::Proxy("127.0.0.1:7".into()))
    );
    assert_eq!(
        resolve_via(None, Some("127.0.0.1:8"), env_of(&both)),
        Ok(Via::Outbound("127.0.0.1:8".into()))
    );
    assert_eq!(
        resolve_via(None, None, env_of(&[("HTTP_PROXY", "http://proxy")])),
        Ok(Via::Proxy("proxy:80".into()))
    );
    assert_eq!(
        resolve_via(None, None, env_of(&[("HTTP_PROXY", "http://[::1]:15001")])),
        Ok(Via::Proxy("[::1]:15001".into()))
    );
    for bad in [
        "https://127.0.0.1:15001",
        "http://user@p:1",
        "http://p:1/path",
        "http://:1",
        "http://::1:5",
    ] {
        let err = resolve_via(None, None, env_of(&[("HTTP_PROXY", bad)])).expect_err(bad);
        assert!(
            matches!(err, SettingsError::BadProxy { .. }),
            "{bad}: {err}"
        );
        assert!(
            err.to_string().contains("HTTP_PROXY"),
            "names its source: {err}"
        );
    }
    let err = resolve_via(None, None, env_of(&[("TRELLIS_OUTBOUND", "127.0.0.1")])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "TRELLIS_OUTBOUND=\"127.0.0.1\" is not HOST:PORT (the sidecar's outbound listener)"
    );
}

#[test]
fn identity_comes_from_the_trellis_variables() {
    let me = Identity::from_env(
        "inference",
        env_of(&[
            ("TRELLIS_SERVICE", "inference"),
            ("TRELLIS_NAMESPACE", "demo"),
            ("TRELLIS_WORKLOAD", "inference-v2-0"),
            ("TRELLIS_VERSION", "v2"),
        ]),
    );
    assert_eq!(
        me,
        Identity {
            service: "inference".into(),
            namespace: "demo".into(),
            workload: "inference-v2-0".into(),
            version: "v2".into()
        }
    );
    let by_hand = Identity::from_env("postprocess", env_of(&[]));
    assert_eq!(
        (
            by_hand.workload.as_str(),
            by_hand.namespace.as_str(),
            by_hand.version.as_str()
        ),
        ("postprocess-local", "default", "")
    );
}

#[test]
fn durations_parse_as_in_the_mesh_file() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    for bad in ["5", "s", "5h", "-1s", ""] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

// ------------------------------------------------------------------ latency

#[test]
fn latency_is_log_normal_around_the_median_and_reproducible() {
    for (model, median_ms) in [(Latency::SLOW, 40.0), (Latency::FAST, 10.0)] {
        let mut samples: Vec<f64> = (0..2001_u64)
            .map(|s| model.sample(s).as_secs_f64() * 1000.0)
            .collect();
        samples.sort_by(f64::total_cmp);
        let p50 = samples[1000];
        let p99 = samples[1980];
        assert!(
            (p50 - median_ms).abs() < median_ms * 0.08,
            "p50 {p50} vs {median_ms}"
        );
        assert!(
            p99 > median_ms * 1.8 && p99 < median_ms * 3.0,
            "a tail: p99 {p99}"
        );
        assert!(samples[0] >= median_ms / 4.0 - 1e-9 && samples[2000] <= median_ms * 8.0 + 1e-9);
        assert_eq!(model.sample(99), model.sample(99));
    }
    let fixed = Latency {
        median: Duration::from_millis(5),
        sigma: 0.0,
    };
    assert_eq!(fixed.sample(1), Duration::from_millis(5));
}

// ------------------------------------------------------------------ handlers

fn stage(role: Role, service: &str, workload: &str, version: &str) -> Stage {
    Stage {
        me: Identity {
            service: service.into(),
            namespace: "default".into(),
            workload: workload.into(),
            version: version.into(),
        },
        role,
        // Never dialled by these tests: each request is answered before a
        // next hop would be called.
        upstream: Upstream::new(Via::Proxy("127.0.0.1:9".into()), Duration::from_secs(1)),
    }
}

async fn call(
    stage: &Stage,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = stage
        .handle(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await;
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json =
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"));
    (parts.status, parts.headers, json)
}

#[tokio::test]
async fn postprocess_answers_with_its_hop_on_the_path() {
    let s = stage(Role::Postprocess, "postprocess", "postprocess-0", "");
    let (status, headers, body) = call(
        &s,
        Method::POST,
        "/v1/postprocess",
        &[
            ("x-request-id", "rid-9"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        r#"{"model":"fast","tokens":["mesh","service"]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-request-id"], "rid-9");
    let answer: Answer = serde_json::from_value(body).expect("an Answer");
    assert_eq!(answer.answer, "Mesh service.");
    assert_eq!((answer.model.as_str(), answer.output_tokens), ("fast", 2));
    assert_eq!(answer.request_id, "rid-9");
    assert_eq!(answer.path.len(), 1);
    let Hop {
        service,
        workload,
        version,
        request_id,
        trace_id,
        ms,
    } = &answer.path[0];
    assert_eq!(
        (
            service.as_str(),
            workload.as_str(),
            version.as_str(),
            request_id.as_str(),
            trace_id.as_str()
        ),
        (
            "postprocess",
            "postprocess-0",
            "",
            "rid-9",
            "4bf92f3577b34da6a3ce929d0e0e4736"
        )
    );
    assert!(*ms >= 0.0);
}

#[test]
fn each_stage_puts_its_hop_first() {
    let hop = |s: &str, v: &str| Hop {
        service: s.into(),
        workload: format!("{s}-0"),
        version: v.into(),
        ms: 1.0,
        request_id: "r".into(),
        trace_id: "t".into(),
    };
    let a = Answer {
        request_id: "r".into(),
        answer: "x".into(),
        model: "slow".into(),
        input_tokens: 1,
        output_tokens: 1,
        path: vec![hop("postprocess", "")],
    }
    .through(hop("inference", "v1"))
    .through(hop("preprocess", ""))
    .through(hop("gateway", ""));
    let services: Vec<&str> = a.path.iter().map(|h| h.service.as_str()).collect();
    assert_eq!(
        services,
        ["gateway", "preprocess", "inference", "postprocess"]
    );
    assert_eq!(a.version_of("inference"), Some("v1"));
    assert_eq!(a.version_of("nosuch"), None);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_reason_before_any_call() {
    let gw = stage(
        Role::Gateway {
            next: "http://preprocess:8081".parse().unwrap(),
        },
        "gateway",
        "gateway-0",
        "",
    );
    let (status, _, body) = call(&gw, Method::POST, "/v1/infer", &[], r#"{"prompt": "   "}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["reason"], "bad_request");
    assert!(
        body["error"].as_str().unwrap().contains("empty prompt"),
        "{body}"
    );
    let (status, _, body) = call(&gw, Method::POST, "/v1/infer", &[], "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not the JSON gateway expects"),
        "{body}"
    );
    let (status, _, _) = call(&gw, Method::GET, "/v1/infer", &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "GET without ?prompt=");
    let (status, _, body) = call(&gw, Method::GET, "/elsewhere", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "gateway serves /v1/infer and /healthz, not /elsewhere"
    );
    let (status, _, _) = call(&gw, Method::DELETE, "/v1/infer", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let pre = stage(
        Role::Preprocess {
            next: "http://inference:9090".parse().unwrap(),
            max_prompt_chars: 10,
        },
        "preprocess",
        "preprocess-0",
        "",
    );
    let (status, _, body) = call(
        &pre,
        Method::POST,
        "/v1/preprocess",
        &[],
        r#"{"prompt":"far too long a prompt"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("between 1 and 10"),
        "{body}"
    );
    let (status, _, _) = call(&pre, Method::GET, "/v1/preprocess", &[], "").await;
    assert_eq!(
        status,
        StatusCode::METHOD_NOT_ALLOWED,
        "only the gateway takes GET"
    );
}

#[tokio::test]
async fn health_names_the_workload() {
    let s = stage(
        Role::Inference {
            next: "http://postprocess:8082".parse().unwrap(),
            model: "fast".into(),
            latency: Latency::FAST,
            max_tokens: 8,
        },
        "inference",
        "inference-v2-0",
        "v2",
    );
    let (status, _, body) = call(&s, Method::GET, "/healthz", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"status": "ok", "service": "inference", "workload": "inference-v2-0", "version": "v2"})
    );
}

// ------------------------------------------------------------------ load

#[test]
fn the_load_generator_counts_versions_and_summarises_errors() {
    let answer: Answer = serde_json::from_value(json!({
        "request_id": "r", "answer": "x", "model": "fast", "input_tokens": 1, "output_tokens": 1,
        "path": [
            {"service": "gateway", "workload": "gateway-0", "version": "", "ms": 1.0, "request_id": "r", "trace_id": "t"},
            {"service": "inference", "workload": "inference-v2-0", "version": "v2", "ms": 1.0, "request_id": "r", "trace_id": "t"}
        ]
    }))
    .unwrap();
    let denied = ErrorBody {
        error: "x".into(),
        hop: "gateway -> preprocess".into(),
        upstream_status: Some(503),
        reason: Some("upstream_connect_failure".into()),
        request_id: "r".into(),
        via: vec![],
    };
    let mut c = Counts {
        sent: 4,
        ..Counts::default()
    };
    assert_eq!(
        c.report(Duration::from_secs(5)),
        None,
        "quiet while all is well"
    );
    c.record(&Outcome::Ok(answer.clone()));
    c.record(&Outcome::Ok(answer));
    let failure = UpstreamFailure::Status {
        status: 503,
        reason: None,
        body: Bytes::from(serde_json::to_vec(&denied).unwrap()),
    };
    c.record(&Outcome::from_failure(&failure));
    c.record(&Outcome::from_failure(&UpstreamFailure::Timeout {
        after: Duration::from_secs(1),
    }));
    c.skipped = 1;
    assert_eq!(c.served_by["inference"]["v2"], 2);
    assert_eq!(c.served_by["gateway"]["-"], 2);
    assert_eq!(
        c.report(Duration::from_secs(5)).unwrap(),
        "load: last 5s: 4 sent, 2 ok, 2 failed, 1 not sent (concurrency cap reached: the pipeline is slower than the rate); \
1x 503 upstream_connect_failure (gateway -> preprocess); 1x timeout"
    );
    let at_sidecar = Outcome::from_failure(&UpstreamFailure::Status {
        status: 404,
        reason: Some("route_not_found".into()),
        body: Bytes::new(),
    });
    assert_eq!(
        at_sidecar,
        Outcome::Failed("404 route_not_found (at the load generator's sidecar)".into())
    );
}
