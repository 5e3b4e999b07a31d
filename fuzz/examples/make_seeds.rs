//! Writes the seed inputs into `corpus/<target>/seed-*`: the samples of
//! `/work/shared/wechat/MESSAGES.md` and WeChat's published safe-mode vectors, and real
//! `Encrypt` texts made with `AesKey::encrypt`. Run from `fuzz/`:
//! `cargo run --example make_seeds`.

use std::fs;
use std::path::Path;

use wxlogin_fuzz::{APPID, KEY, OpenMode, TOKEN};
use wxlogin_wechat::crypto::{self, AesKey};
use wxlogin_wechat::reply::text_reply;
use wxlogin_wechat::signature;

const SUBSCRIBE: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
<CreateTime>1409735668</CreateTime>\n\
<MsgType><![CDATA[event]]></MsgType>\n\
<Event><![CDATA[subscribe]]></Event>\n\
<EventKey><![CDATA[qrscene_123123]]></EventKey>\n\
<Ticket><![CDATA[TICKET]]></Ticket>\n\
</xml>";

const SCAN: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
<CreateTime>1409735668</CreateTime>\n\
<MsgType><![CDATA[event]]></MsgType>\n\
<Event><![CDATA[SCAN]]></Event>\n\
<EventKey><![CDATA[123123]]></EventKey>\n\
<Ticket><![CDATA[TICKET]]></Ticket>\n\
</xml>";

const PLAIN_FOLLOW: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\
<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\
<CreateTime>1409735668</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[subscribe]]></Event></xml>";

/// WeChat's published safe-mode sample (a text message).
const SAMPLE_XML: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n<FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n<CreateTime>1409735668</CreateTime>\n<MsgType><![CDATA[text]]></MsgType>\n<Content><![CDATA[abcdteT]]></Content>\n<MsgId>6054768590064713728</MsgId>\n</xml>";
const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
const SAMPLE_TIMESTAMP: &str = "1409735669";
const SAMPLE_NONCE: &str = "1320562132";
const SAMPLE_MSG_SIGNATURE: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn mode(m: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![m];
    v.extend_from_slice(rest);
    v
}

fn main() {
    let key = AesKey::from_encoding_aes_key(KEY).unwrap_or_else(|e| panic!("{e}"));
    let encrypt = |xml: &str| key.encrypt(APPID, xml).unwrap_or_else(|e| panic!("{e}"));
    let safe_body = |enc: &str| {
        format!(
            "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
        )
    };

    // Target 1: callback bodies.
    let reply = text_reply(
        "oyORnuP8q7ou2gfYjqLzSIWZf0rs",
        "gh_10f6c3c3ac5a",
        1_409_735_669,
        "已在网页登录",
    );
    let compatible = SUBSCRIBE.replace(
        "</xml>",
        &format!(
            "<Encrypt><![CDATA[{}]]></Encrypt></xml>",
            encrypt(SUBSCRIBE)
        ),
    );
    let envelope = crypto::seal_reply(&key, TOKEN, APPID, &reply, SAMPLE_TIMESTAMP, SAMPLE_NONCE)
        .unwrap_or_else(|e| panic!("{e}"));
    for (name, body) in [
        ("subscribe", SUBSCRIBE.to_owned()),
        ("scan", SCAN.to_owned()),
        ("plain-follow", PLAIN_FOLLOW.to_owned()),
        ("text-message", SAMPLE_XML.to_owned()),
        ("safe-mode", safe_body(SAMPLE_ENCRYPT)),
        ("compatible-mode", compatible),
        ("text-reply", reply.clone()),
        ("sealed-reply", envelope),
        (
            "entities",
            "<?xml version=\"1.0\"?><xml><!-- c --><EventKey>a&amp;b&#x41;&#66;&lt;</EventKey>\
             <ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>1</ScanResult></ScanCodeInfo>\
             <Event/></xml>"
                .to_owned(),
        ),
        (
            "dtd",
            "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
             <xml><EventKey>&xxe;</EventKey></xml>"
                .to_owned(),
        ),
    ] {
        write("callback_xml", name, body.as_bytes());
    }

    // Target 2: mode byte 0 = Encrypt text, 1 = plaintext, 2 = round trip, 3 = key.
    write(
        "safe_mode",
        "sample-encrypt",
        &mode(0, SAMPLE_ENCRYPT.as_bytes()),
    );
    for (name, xml) in [("subscribe", SUBSCRIBE), ("scan", SCAN), ("reply", &reply)] {
        write(
            "safe_mode",
            &format!("encrypt-{name}"),
            &mode(0, encrypt(xml).as_bytes()),
        );
    }
    let mut plain = b"0123456789abcdef".to_vec();
    plain.extend_from_slice(&u32::try_from(SCAN.len()).unwrap_or(0).to_be_bytes());
    plain.extend_from_slice(SCAN.as_bytes());
    plain.extend_from_slice(APPID.as_bytes());
    let pad = 32 - plain.len() % 32;
    plain.resize(plain.len() + pad, u8::try_from(pad).unwrap_or(0));
    write("safe_mode", "plaintext-scan", &mode(1, &plain));
    let mut short = b"0123456789abcdef\0\0\0\x06<xml/>".to_vec();
    short.extend_from_slice(APPID.as_bytes());
    let pad = 32 - short.len() % 32;
    short.resize(short.len() + pad, u8::try_from(pad).unwrap_or(0));
    write("safe_mode", "plaintext-short", &mode(1, &short));
    let mut trip = b"0123456789abcdef".to_vec();
    trip.extend_from_slice(APPID.as_bytes());
    trip.push(0);
    trip.extend_from_slice(SAMPLE_TIMESTAMP.as_bytes());
    trip.push(0);
    trip.extend_from_slice(b"nonce]]>&<");
    trip.push(0);
    trip.extend_from_slice(SCAN.as_bytes());
    write("safe_mode", "round-trip", &mode(2, &trip));
    write("safe_mode", "key", &mode(3, KEY.as_bytes()));

    // Target 3: query strings (also tried as Last-Event-ID).
    let sig = signature::signature(TOKEN, SAMPLE_TIMESTAMP, SAMPLE_NONCE);
    for (name, q) in [
        (
            "url-check",
            format!(
                "signature={sig}&timestamp={SAMPLE_TIMESTAMP}&nonce={SAMPLE_NONCE}&echostr=5837397520665436492"
            ),
        ),
        (
            "event-push",
            format!(
                "signature={sig}&timestamp={SAMPLE_TIMESTAMP}&nonce={SAMPLE_NONCE}&openid=oyORnuP8q7ou2gfYjqLzSIWZf0rs"
            ),
        ),
        (
            "safe-mode-push",
            format!(
                "signature={sig}&timestamp={SAMPLE_TIMESTAMP}&nonce={SAMPLE_NONCE}&openid=oyORnuP8q7ou2gfYjqLzSIWZf0rs&encrypt_type=aes&msg_signature={SAMPLE_MSG_SIGNATURE}"
            ),
        ),
        (
            "sse",
            "token=pt_abc.def&lang=en&scene=Qk3v0_x-9ZmN2pL8rT4wYa".to_owned(),
        ),
        (
            "sse-escaped",
            "token=a%2Bb+c&lang=zh-CN&scene=%41bc%zz".to_owned(),
        ),
        (
            "sse-id",
            "token=pt_abc.def&lang=en&id=wxl_Qk3v0_x-9ZmN2pL8rT4wYa.AAAAAAAAAAAAAAAAAAAAAA.0"
                .to_owned(),
        ),
        (
            "last-event-id",
            "wxl_Qk3v0_x-9ZmN2pL8rT4wYa.Zm9vYmFyYmF6cXV4cXV1eA.1".to_owned(),
        ),
    ] {
        write("query", name, q.as_bytes());
    }
    // Target 4: mode byte, skew byte, then the parts (NUL-separated): signed inputs are
    // timestamp, nonce, more query, body; raw ones query, body.
    let signed = OpenMode::SIGNED;
    let aes = OpenMode::AES;
    let keys = OpenMode::KEYS;
    let body = |kind: u8| kind << OpenMode::BODY_SHIFT;
    let ts = SAMPLE_TIMESTAMP.as_bytes();
    let nonce = SAMPLE_NONCE.as_bytes();
    let openid = b"openid=oyORnuP8q7ou2gfYjqLzSIWZf0rs".as_slice();
    let sample_body = safe_body(SAMPLE_ENCRYPT);
    let overflow = format!(
        "signature={}&timestamp=-9223372036854775808&nonce=1320562132&openid=oAttacker",
        signature::signature(TOKEN, "-9223372036854775808", SAMPLE_NONCE)
    );
    for (name, mode, skew, parts) in [
        (
            "plain-scan",
            signed,
            0,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "plain-stale",
            signed,
            100,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "plain-with-key",
            signed | keys,
            0,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "compatible-no-key",
            signed | aes,
            0,
            vec![ts, nonce, openid, SUBSCRIBE.as_bytes()],
        ),
        (
            "sample-safe-mode",
            signed | keys | aes | body(1),
            0,
            vec![ts, nonce, openid, sample_body.as_bytes()],
        ),
        (
            "sealed-scan",
            signed | keys | aes | body(2),
            0,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "sealed-previous-key",
            signed | keys | aes | body(2) | OpenMode::PREVIOUS_KEY,
            -50i8,
            vec![ts, nonce, openid, SUBSCRIBE.as_bytes()],
        ),
        (
            "forged-scan",
            signed | keys | aes | body(3),
            0,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "no-msg-signature",
            signed | keys | aes | body(2) | OpenMode::NO_MSG_SIGNATURE,
            0,
            vec![ts, nonce, openid, SCAN.as_bytes()],
        ),
        (
            "upper-case-signature",
            signed | OpenMode::UPPER,
            0,
            vec![ts, nonce, openid, PLAIN_FOLLOW.as_bytes()],
        ),
        (
            "raw-timestamp-min",
            0,
            0,
            vec![overflow.as_bytes(), SCAN.as_bytes()],
        ),
    ] {
        let mut input = vec![mode, skew.to_ne_bytes()[0]];
        input.extend_from_slice(&parts.join(&0u8));
        write("callback_open", name, &input);
    }
    println!("seeds written");
}
