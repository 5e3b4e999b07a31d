//! Builders of what only WeChat sends, for fakes, tests and load tools (feature `test-util`):
//! a scan event's XML and the signed query of a plaintext-mode callback. wxlogin itself only
//! reads these ([`crate::callback::open`]); the fake phone and `wxlogin-bench` write them.

use crate::signature::signature;

/// The XML of a scan event, as WeChat writes it. `subscribe` events carry `qrscene_` + scene.
pub fn scan_xml(
    gh_id: &str,
    openid: &str,
    create_time: i64,
    new_follower: bool,
    scene: &str,
    ticket: &str,
) -> String {
    let (event, key) = if new_follower {
        ("subscribe", format!("qrscene_{scene}"))
    } else {
        ("SCAN", scene.to_owned())
    };
    format!(
        "<xml><ToUserName><![CDATA[{gh_id}]]></ToUserName>\n\
         <FromUserName><![CDATA[{openid}]]></FromUserName>\n\
         <CreateTime>{create_time}</CreateTime>\n\
         <MsgType><![CDATA[event]]></MsgType>\n\
         <Event><![CDATA[{event}]]></Event>\n\
         <EventKey><![CDATA[{key}]]></EventKey>\n\
         <Ticket><![CDATA[{ticket}]]></Ticket>\n\
         </xml>"
    )
}

/// The query string of a plaintext-mode push: `signature`, `timestamp`, `nonce`, `openid`.
pub fn signed_query(mp_token: &str, timestamp: i64, nonce: &str, openid: &str) -> String {
    let ts = timestamp.to_string();
    let sig = signature(mp_token, &ts, nonce);
    let openid = percent_encoding::utf8_percent_encode(openid, percent_encoding::NON_ALPHANUMERIC);
    format!("signature={sig}&timestamp={ts}&nonce={nonce}&openid={openid}")
}
