//! User sign-in, the watchlist, sending to a user, terminating a user's
//! connections, and the sign-in deadline.

use herald_e2e::{data, Closed, TestServer};
use serde_json::json;

#[tokio::test]
async fn sign_in_succeeds_with_a_valid_signature() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    let user_data = json!({"id": "u1", "user_info": {"name": "U"}});
    let ok = client.sign_in(user_data.clone()).await;
    assert_eq!(data(&ok)["user_data"], user_data.to_string());
}

#[tokio::test]
async fn bad_sign_in_closes_with_4009() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.send(json!({"event": "pusher:signin", "data": {"auth": "app-key:00", "user_data": "{\"id\":\"u\"}"}})).await;
    let (closed, error) = client.expect_close().await;
    assert_eq!(closed, Closed::Code(4009));
    assert_eq!(error.unwrap()["data"]["code"], 4009);

    // A valid signature over user_data without an id is refused too.
    let mut client = server.connect().await;
    let user_data = json!({"name": "no id"}).to_string();
    let to_sign = herald_protocol::sign::user_string_to_sign(&client.socket_id, &user_data);
    let auth = herald_protocol::sign::auth_token("app-key", "app-secret", &to_sign);
    client.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})).await;
    assert_eq!(client.expect_close().await.0, Closed::Code(4009));
}

#[tokio::test]
async fn sign_in_deadline_closes_with_4009() {
    let server = TestServer::with(|c| c.apps[0].user_authentication_timeout = 1).await;
    let mut signed = server.connect().await;
    signed.sign_in(json!({"id": "ok"})).await;
    let mut lazy = server.connect().await;
    assert_eq!(lazy.expect_close().await.0, Closed::Code(4009));
    // `signed` connected first, so its deadline (had it one) passed before
    // `lazy`'s: it still answers, and nothing (no 4009) came before the pong.
    signed.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(signed.recv().await["event"], "pusher:pong");
}

#[tokio::test]
async fn events_reach_a_signed_in_user() {
    let server = TestServer::start().await;
    let mut client = server.connect().await;
    client.sign_in(json!({"id": "42"})).await;
    let ok = client.subscribe("#server-to-user-42").await;
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let (status, _) = server.rest().trigger(&["#server-to-user-42"], "note", r#"{"hi":1}"#).await;
    assert_eq!(status, 200);
    assert_eq!(client.recv().await["event"], "note");

    // Nobody else may listen to that user's channel.
    let mut intruder = server.connect().await;
    assert_eq!(intruder.subscribe("#server-to-user-42").await["data"]["status"], 403);
}

#[tokio::test]
async fn terminate_connections_closes_every_socket_of_the_user() {
    let server = TestServer::start().await;
    let mut a1 = server.connect().await;
    let mut a2 = server.connect().await;
    let mut b = server.connect().await;
    a1.sign_in(json!({"id": "a"})).await;
    a2.sign_in(json!({"id": "a"})).await;
    b.sign_in(json!({"id": "b"})).await;
    let (status, body) = server.rest().post("/users/a/terminate_connections", &json!({})).await;
    assert_eq!((status, body), (200, json!({})));
    assert_eq!(a1.expect_close().await.0, Closed::Code(4009));
    assert_eq!(a2.expect_close().await.0, Closed::Code(4009));
    b.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(b.recv_event("pusher:pong").await["event"], "pusher:pong");
}

#[tokio::test]
async fn watchlist_reports_online_and_offline() {
    let server = TestServer::start().await;
    let mut friend = server.connect().await;
    friend.sign_in(json!({"id": "friend"})).await;

    let mut me = server.connect().await;
    me.sign_in(json!({"id": "me", "watchlist": ["friend", "stranger"]})).await;
    let snapshot = me.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(
        data(&snapshot),
        json!({"events": [{"name": "online", "user_ids": ["friend"]}, {"name": "offline", "user_ids": ["stranger"]}]})
    );

    let mut stranger = server.connect().await;
    stranger.sign_in(json!({"id": "stranger"})).await;
    let online = me.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(data(&online), json!({"events": [{"name": "online", "user_ids": ["stranger"]}]}));

    drop(friend);
    let offline = me.recv_event("pusher_internal:watchlist_events").await;
    assert_eq!(data(&offline), json!({"events": [{"name": "offline", "user_ids": ["friend"]}]}));
}
