#![allow(clippy::unwrap_used)]
//! `docker search`'s API (`/v1/_ping`, `/v1/search`) in process: what
//! matches, the page size, and that nobody finds what they may not pull.

mod common;

use axum::http::{Method, StatusCode};
use common::{Registry, Secured};

fn names(r: &common::Reply) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect()
}

fn json(r: &common::Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn ping_says_a_standalone_registry() {
    let reg = Registry::new();
    let r = reg.get("/v1/_ping").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-docker-registry-standalone"), "true");
}

#[tokio::test]
async fn search_matches_names_without_case_and_descriptions() {
    let reg = Registry::new();
    for (repo, extra) in [
        ("team/hello-world", String::new()),
        (
            "team/web",
            r#","annotations":{"org.opencontainers.image.description":"Says Hello to the web"}"#
                .to_owned(),
        ),
        ("other/db", String::new()),
    ] {
        let m = reg.image_manifest(repo, repo.as_bytes(), &extra).await;
        assert_eq!(
            reg.put_manifest(repo, "latest", &m).await.status,
            StatusCode::CREATED
        );
    }
    let r = reg.get("/v1/search?q=HELLO").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(names(&r), ["team/hello-world", "team/web"]);
    let v = json(&r);
    assert_eq!(v["query"], "HELLO");
    assert_eq!(v["num_results"], 2);
    assert_eq!(v["results"][1]["description"], "Says Hello to the web");
    assert_eq!(v["results"][0]["description"], "");
    assert_eq!(v["results"][0]["star_count"], 0);
    assert_eq!(v["results"][0]["is_official"], false);
    assert_eq!(v["results"][0]["is_automated"], false);
    assert_eq!(names(&reg.get("/v1/search?q=db").await), ["other/db"]);
    assert!(names(&reg.get("/v1/search?q=nothing-like-it").await).is_empty());
    // An empty query lists everything visible.
    assert_eq!(names(&reg.get("/v1/search?q=").await).len(), 3);
}

#[tokio::test]
async fn n_defaults_to_25_allows_1_to_100_and_refuses_the_rest() {
    let reg = Registry::new();
    for i in 0..30 {
        let repo = format!("many/r{i:02}");
        let m = reg.image_manifest(&repo, b"x", "").await;
        assert_eq!(
            reg.put_manifest(&repo, "v1", &m).await.status,
            StatusCode::CREATED
        );
    }
    let r = reg.get("/v1/search?q=many").await;
    assert_eq!(names(&r).len(), 25);
    assert_eq!(
        json(&r)["num_results"],
        30,
        "num_results counts all matches"
    );
    assert_eq!(
        names(&reg.get("/v1/search?q=many&n=3").await),
        ["many/r00", "many/r01", "many/r02"]
    );
    assert_eq!(names(&reg.get("/v1/search?q=many&n=100").await).len(), 30);
    for bad in ["0", "101", "-1", "ten"] {
        let r = reg.get(&format!("/v1/search?q=many&n={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "n={bad}");
        let msg = json(&r)["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(msg.contains("from 1 to 100"), "{msg}");
    }
}

#[tokio::test]
async fn search_finds_only_what_the_caller_may_pull() {
    let reg = Secured::new(false).await;
    reg.push_image("root", "team/app", "1", "").await;
    reg.push_image("root", "public/app", "1", "").await;
    reg.push_image("root", "private/app", "1", "").await;
    let search = |user: Option<&'static str>| {
        let reg = &reg;
        async move {
            reg.send_as(user, Method::GET, "/v1/search?q=app", &[], "")
                .await
        }
    };
    let r = search(None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(names(&r), ["public/app"], "anonymous: anonymous-pull only");
    assert_eq!(
        names(&search(Some("bob")).await),
        ["public/app", "team/app"]
    );
    assert_eq!(
        names(&search(Some("alice")).await),
        ["public/app", "team/app"]
    );
    assert_eq!(
        names(&search(Some("root")).await),
        ["private/app", "public/app", "team/app"]
    );
    let wrong = search(Some("mallory")).await;
    assert_eq!(
        wrong.status,
        StatusCode::UNAUTHORIZED,
        "wrong credentials are refused, not anonymous"
    );
    assert!(wrong.header("www-authenticate").starts_with("Basic"));
}

#[tokio::test]
async fn empty_basic_credentials_search_as_anonymous_and_tokens_as_their_subject() {
    let reg = Secured::new(false).await;
    reg.push_image("root", "team/app", "1", "").await;
    reg.push_image("root", "public/app", "1", "").await;
    // What the Docker daemon sends over HTTPS when logged out.
    let r = reg
        .send_as(
            None,
            Method::GET,
            "/v1/search?q=app",
            &[("authorization", "Basic Og==")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(names(&r), ["public/app"]);
    // What it sends holding a refresh token: a Bearer token for the search.
    let t = reg
        .send_as(
            Some("alice"),
            Method::GET,
            "/token?service=hub.test&scope=registry:catalog:search",
            &[],
            "",
        )
        .await;
    assert_eq!(t.status, StatusCode::OK);
    let token = json(&t)["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let r = reg
        .send_as(
            None,
            Method::GET,
            "/v1/search?q=app",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(names(&r), ["public/app", "team/app"]);
    let forged = reg
        .send_as(
            None,
            Method::GET,
            "/v1/search?q=app",
            &[("authorization", "Bearer not.a.token")],
            "",
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
}
