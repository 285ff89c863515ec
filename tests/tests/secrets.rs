//! Secrets at rest and in the API (issue 21, item 7): what an admin sets for a plugin is
//! sealed in the database with a key kept outside it, read back on restart, sealed at
//! start when it was stored in the clear, and masked in the API by the plugin's own
//! declaration. SQLite and PostgreSQL.

use drover_tests::{TestServer, component, components, e2e};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The stored `plugin_settings` columns of `plugin`, as the database holds them.
async fn stored(server: &TestServer, plugin: &str) -> (String, Option<String>) {
    use sqlx::Connection;
    let url = server.database_url();
    let sql = "SELECT config, oauth FROM plugin_settings WHERE plugin = $1";
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_as(sql).bind(plugin).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query_as(sql).bind(plugin).fetch_one(&mut c).await.unwrap()
    }
}

async fn put_settings(server: &TestServer, plugin: &str, body: Value) {
    let r = server.admin(Method::PUT, &format!("/api/v1/plugins/{plugin}/settings")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

async fn shown(server: &TestServer, plugin: &str) -> Value {
    server.admin(Method::GET, &format!("/api/v1/plugins/{plugin}/settings")).send().await.unwrap().json().await.unwrap()
}

async fn sealed_at_rest(server: TestServer) -> TestServer {
    let token = "ya29.a0-SECRET-ACCESS-TOKEN";
    put_settings(&server, "fcm", json!({"config": {"project_id": "drover-test", "access_token": token}})).await;
    let (config, _) = stored(&server, "fcm").await;
    assert!(config.starts_with("drv1:") && !config.contains(token) && !config.contains("drover-test"), "{config}");
    assert_eq!(shown(&server, "fcm").await["config"]["access_token"], "***");
    assert_eq!(server.state.settings.get("fcm").config["access_token"], token);

    // A row written before sealing existed (in the clear) is read, and sealed at start.
    server.sql(r#"UPDATE plugin_settings SET config = '{"access_token":"legacy-token"}' WHERE plugin = 'fcm'"#).await;
    let server = server.restart().await;
    assert_eq!(server.state.settings.get("fcm").config["access_token"], "legacy-token");
    let (config, _) = stored(&server, "fcm").await;
    assert!(config.starts_with("drv1:") && !config.contains("legacy-token"), "{config}");

    // A sealed value moved to another plugin's row does not open there.
    put_settings(&server, "wns", json!({"config": {"access_token": "wns-token"}})).await;
    server
        .sql("UPDATE plugin_settings SET config = (SELECT config FROM plugin_settings WHERE plugin = 'fcm') WHERE plugin = 'wns'")
        .await;
    assert!(server.state.store.plugin_settings().await.is_err(), "a sealed value opened in another place");
    server.sql("DELETE FROM plugin_settings WHERE plugin = 'wns'").await;
    server
}

mod sealed_at_rest {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let server = drover_tests::TestServer::start(drover_tests::Backend::Sqlite).await;
        super::sealed_at_rest(server).await.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let Some(backend) = drover_tests::Backend::postgres() else { return };
        let server = drover_tests::TestServer::start(backend).await;
        super::sealed_at_rest(server).await.stop().await;
    }
}

/// A config key the plugin declares secret (`secret_config`) is masked though its name
/// looks harmless; the plugin itself gets the value.
async fn masked_by_the_plugins_declaration(server: &TestServer) {
    server.install_signed("testbed", "drover-tests", &["log", "kv", "config"], &component(components::TESTBED)).await;
    put_settings(server, "testbed", json!({"config": {"launch_code": "0000", "mode": "calm"}})).await;
    assert_eq!(shown(server, "testbed").await["config"], json!({"launch_code": "***", "mode": "calm"}));
    let id = drover_tests::unique("tb");
    let r = server.http.post(server.url("/agent/v1/testbed/enroll")).body(id.clone()).send().await.unwrap();
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    let r = server
        .http
        .put(server.url(&format!("/agent/v1/testbed/devices/{id}/x")))
        .bearer_auth(token)
        .body("config:launch_code")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(server.device("testbed", &id).await["metadata"]["launch_code"], "0000");
    // A read-modify-write of what GET showed keeps the stored secret.
    let mut back = shown(server, "testbed").await;
    back["config"]["mode"] = json!("alert");
    put_settings(server, "testbed", back).await;
    assert_eq!(server.state.settings.get("testbed").config["launch_code"], "0000");
}
e2e!(masked_by_the_plugins_declaration, super::masked_by_the_plugins_declaration);
