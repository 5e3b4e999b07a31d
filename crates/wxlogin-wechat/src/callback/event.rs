//! A parsed callback, classified into what a QR-code login acts on.

use std::fmt;

use crate::ids::{OpenId, Scene};
use crate::xml::CallbackXml;

/// How the user came to scan: already a follower, or following by this scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScanKind {
    /// `Event=SCAN`: the user already follows the account.
    #[serde(rename = "SCAN")]
    Scan,
    /// `Event=subscribe` with `EventKey=qrscene_…`: the user followed by scanning.
    #[serde(rename = "subscribe")]
    Subscribe,
}

impl ScanKind {
    /// The event name as WeChat writes it and as the browser receives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scan => "SCAN",
            Self::Subscribe => "subscribe",
        }
    }
}

/// A scan of a temporary QR code with a scene. Its text borrows from the callback it was read
/// from: most scans on a busy account are for scenes nobody waits on, and cost no copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEvent<'a> {
    /// SCAN or subscribe.
    pub kind: ScanKind,
    /// The QR code's scene.
    pub scene: Scene,
    /// Who scanned (the openid).
    pub openid: &'a str,
    /// WeChat's `CreateTime`; with the openid it identifies retries of one event.
    pub create_time: &'a str,
    /// The account's `gh_` id (for a passive reply).
    pub account: &'a str,
}

impl ScanEvent<'_> {
    /// The key under which WeChat's retries of this event are recognised
    /// (`scan:openid:CreateTime`), written out only when it is stored.
    pub fn dedupe_key(&self) -> DedupeKey<'_> {
        DedupeKey(Key::Event {
            openid: self.openid,
            create_time: self.create_time,
        })
    }

    /// Who scanned, as the result carries it.
    pub fn openid(&self) -> OpenId {
        OpenId::new(self.openid)
    }
}

/// A text message sent to the account. Its text borrows from the callback, as a scan's does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMessage<'a> {
    /// Who sent it (the openid).
    pub openid: &'a str,
    /// What it says, as the user typed it.
    pub content: &'a str,
    /// WeChat's `MsgId`: the same for every retry of the message.
    pub msg_id: &'a str,
    /// WeChat's `CreateTime`.
    pub create_time: &'a str,
    /// The account's `gh_` id (for a passive reply).
    pub account: &'a str,
}

impl TextMessage<'_> {
    /// The key under which WeChat's retries of this message are recognised (`msg:MsgId`):
    /// ordinary messages are told apart by their id, events by sender and time.
    pub fn dedupe_key(&self) -> DedupeKey<'_> {
        DedupeKey(Key::Message {
            msg_id: self.msg_id,
        })
    }

    /// Who sent it, as a result carries it.
    pub fn openid(&self) -> OpenId {
        OpenId::new(self.openid)
    }
}

/// [`ScanEvent::dedupe_key`] and [`TextMessage::dedupe_key`]: `scan:openid:CreateTime` or
/// `msg:MsgId` when displayed.
#[derive(Debug, Clone, Copy)]
pub struct DedupeKey<'a>(Key<'a>);

#[derive(Debug, Clone, Copy)]
enum Key<'a> {
    Event {
        openid: &'a str,
        create_time: &'a str,
    },
    Message {
        msg_id: &'a str,
    },
}

impl fmt::Display for DedupeKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Key::Event {
                openid,
                create_time,
            } => write!(f, "scan:{openid}:{create_time}"),
            Key::Message { msg_id } => write!(f, "msg:{msg_id}"),
        }
    }
}

/// What a callback is, for a QR-code login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callback<'a> {
    /// A scan of a QR code with a scene: possibly a login.
    Scan(ScanEvent<'a>),
    /// A text message: possibly a login code.
    Text(TextMessage<'a>),
    /// Anything else: other messages, menu clicks, plain follows, unfollows, ...
    Other,
}

/// Classifies a parsed callback.
pub fn classify<'a>(xml: &'a CallbackXml<'_>) -> Callback<'a> {
    match xml.msg_type.as_deref() {
        Some("event") => {}
        Some("text") => return classify_text(xml),
        _ => return Callback::Other,
    }
    let key = xml.event_key.as_deref().unwrap_or_default();
    let (kind, scene) = match xml.event.as_deref() {
        Some("SCAN") => (ScanKind::Scan, key),
        Some("subscribe") => match key.strip_prefix("qrscene_") {
            Some(scene) => (ScanKind::Subscribe, scene),
            None => return Callback::Other,
        },
        _ => return Callback::Other,
    };
    let (Ok(scene), Some(openid), Some(create_time)) = (
        Scene::parse(scene),
        xml.from_user_name.as_deref().filter(|s| !s.is_empty()),
        xml.create_time.as_deref(),
    ) else {
        return Callback::Other;
    };
    Callback::Scan(ScanEvent {
        kind,
        scene,
        openid,
        create_time,
        account: xml.to_user_name.as_deref().unwrap_or_default(),
    })
}

/// A text message, when it has what identifies it (sender, id, time) and text.
fn classify_text<'a>(xml: &'a CallbackXml<'_>) -> Callback<'a> {
    let present = |f: &'a Option<std::borrow::Cow<'_, str>>| f.as_deref().filter(|s| !s.is_empty());
    let (Some(openid), Some(msg_id), Some(create_time), Some(content)) = (
        present(&xml.from_user_name),
        present(&xml.msg_id),
        present(&xml.create_time),
        xml.content.as_deref(),
    ) else {
        return Callback::Other;
    };
    Callback::Text(TextMessage {
        openid,
        content,
        msg_id,
        create_time,
        account: xml.to_user_name.as_deref().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(event: &'a str, key: Option<&'a str>) -> CallbackXml<'a> {
        CallbackXml {
            to_user_name: Some("gh_1".into()),
            from_user_name: Some("oUser".into()),
            create_time: Some("1409735668".into()),
            msg_type: Some("event".into()),
            event: Some(event.into()),
            event_key: key.map(Into::into),
            ..CallbackXml::default()
        }
    }

    #[test]
    fn scan_uses_the_key_as_the_scene() {
        let xml = event("SCAN", Some("abc"));
        let Callback::Scan(s) = classify(&xml) else {
            panic!("not a scan")
        };
        assert_eq!((s.kind, s.scene.as_str()), (ScanKind::Scan, "abc"));
        assert_eq!(s.dedupe_key().to_string(), "scan:oUser:1409735668");
    }

    #[test]
    fn subscribe_strips_the_leading_prefix_only() {
        let xml = event("subscribe", Some("qrscene_abc"));
        let Callback::Scan(s) = classify(&xml) else {
            panic!("not a scan")
        };
        assert_eq!((s.kind, s.scene.as_str()), (ScanKind::Subscribe, "abc"));
        assert_eq!(
            classify(&event("subscribe", Some("abc_qrscene_x"))),
            Callback::Other
        );
    }

    #[test]
    fn plain_follows_other_events_and_messages_are_other() {
        assert_eq!(classify(&event("subscribe", None)), Callback::Other);
        assert_eq!(classify(&event("subscribe", Some(""))), Callback::Other);
        assert_eq!(classify(&event("scan", Some("abc"))), Callback::Other);
        assert_eq!(classify(&event("CLICK", Some("abc"))), Callback::Other);
        assert_eq!(classify(&event("SCAN", Some("a/b"))), Callback::Other);
        let mut text = event("SCAN", Some("abc"));
        text.msg_type = Some("text".into());
        assert_eq!(classify(&text), Callback::Other);
    }

    fn text(content: Option<&str>, msg_id: Option<&str>) -> CallbackXml<'static> {
        CallbackXml {
            to_user_name: Some("gh_1".into()),
            from_user_name: Some("oUser".into()),
            create_time: Some("1409735668".into()),
            msg_type: Some("text".into()),
            content: content.map(|c| c.to_owned().into()),
            msg_id: msg_id.map(|m| m.to_owned().into()),
            ..CallbackXml::default()
        }
    }

    #[test]
    fn a_text_message_is_told_apart_from_its_retries_by_its_msg_id() {
        let xml = text(Some("登录 483920"), Some("6054768590064713728"));
        let Callback::Text(m) = classify(&xml) else {
            panic!("not a text message")
        };
        assert_eq!(
            (m.openid, m.content, m.account),
            ("oUser", "登录 483920", "gh_1")
        );
        assert_eq!(m.dedupe_key().to_string(), "msg:6054768590064713728");
        // An empty text is still a message; one without an id or a sender is not ours to read.
        assert!(matches!(
            classify(&text(Some(""), Some("1"))),
            Callback::Text(_)
        ));
        assert_eq!(classify(&text(Some("483920"), None)), Callback::Other);
        assert_eq!(classify(&text(Some("483920"), Some(""))), Callback::Other);
        assert_eq!(classify(&text(None, Some("1"))), Callback::Other);
        let mut anonymous = text(Some("483920"), Some("1"));
        anonymous.from_user_name = None;
        assert_eq!(classify(&anonymous), Callback::Other);
    }
}
