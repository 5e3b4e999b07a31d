//! The callback XML parser.
//!
//! WeChat sends a flat `<xml>` element whose children hold text or CDATA. We read only the
//! top-level fields we know, never resolve DTDs or entities beyond XML's five predefined ones
//! and character references (so XXE and "billion laughs" have nothing to expand), and refuse
//! anything that is not well-formed.
//!
//! Two readers, one answer. [`parse_flat`] reads exactly the shape WeChat sends (each child a
//! plain name holding one CDATA section or plain text) and gives up on anything else;
//! [`parse_full`], quick-xml's reader, handles every document. [`parse`] tries the first and
//! falls back to the second. Where the flat reader answers, it must answer what quick-xml would:
//! a property test and the fuzz target (`fuzz/src/lib.rs`) check that. Why two: quick-xml's general
//! reader was the largest part of what a callback costs beyond a bare request (BENCHMARKS.md,
//! "The callbacks ratio reaches 0.8").

use std::borrow::Cow;
use std::sync::LazyLock;

use quick_xml::Reader;
use quick_xml::events::Event;

/// The end of a CDATA section. The searcher is built once: `memmem::find` would build one for
/// every element of every callback.
static CDATA_END: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"]]>"));

/// The fields of a callback that this crate reads. Absent fields are `None`. Each borrows from
/// the body it was read from unless it had to be pieced together (character references);
/// [`CallbackXml::into_owned`] detaches it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CallbackXml<'a> {
    /// The account's `gh_` id.
    pub to_user_name: Option<Cow<'a, str>>,
    /// The sender's openid.
    pub from_user_name: Option<Cow<'a, str>>,
    /// Seconds since the epoch, as WeChat wrote it.
    pub create_time: Option<Cow<'a, str>>,
    /// `event`, `text`, ...
    pub msg_type: Option<Cow<'a, str>>,
    /// `SCAN`, `subscribe`, ... (case-sensitive).
    pub event: Option<Cow<'a, str>>,
    /// The scene (`SCAN`) or `qrscene_` + scene (`subscribe`).
    pub event_key: Option<Cow<'a, str>>,
    /// The QR code's ticket.
    pub ticket: Option<Cow<'a, str>>,
    /// Safe mode's encrypted body.
    pub encrypt: Option<Cow<'a, str>>,
    /// Message id (ordinary messages only).
    pub msg_id: Option<Cow<'a, str>>,
    /// What a text message says.
    pub content: Option<Cow<'a, str>>,
}

/// Why a body is not a callback we can read. Each maps to 400.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The body declares a DTD: refused, whatever it says.
    #[error("DTDs are not accepted")]
    Dtd,
    /// An entity other than XML's predefined five or a character reference.
    #[error("undeclared entity &{0};")]
    Entity(String),
    /// The root element is not `<xml>`.
    #[error("the root element must be <xml>")]
    Root,
    /// Nesting deeper than any WeChat message uses.
    #[error("elements nested too deeply")]
    TooDeep,
    /// Not well-formed XML.
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// Deeper than any message WeChat sends (`<xml><ScanCodeInfo><ScanResult>` is 3).
const MAX_DEPTH: usize = 8;

impl<'a> CallbackXml<'a> {
    fn slot(&mut self, field: usize) -> Option<&mut Option<Cow<'a, str>>> {
        Some(match field {
            0 => &mut self.to_user_name,
            1 => &mut self.from_user_name,
            2 => &mut self.create_time,
            3 => &mut self.msg_type,
            4 => &mut self.event,
            5 => &mut self.event_key,
            6 => &mut self.ticket,
            7 => &mut self.encrypt,
            8 => &mut self.msg_id,
            9 => &mut self.content,
            _ => return None,
        })
    }

    /// The same fields, owning their text.
    pub fn into_owned(self) -> CallbackXml<'static> {
        let own = |f: Option<Cow<'a, str>>| f.map(|c| Cow::Owned(c.into_owned()));
        CallbackXml {
            to_user_name: own(self.to_user_name),
            from_user_name: own(self.from_user_name),
            create_time: own(self.create_time),
            msg_type: own(self.msg_type),
            event: own(self.event),
            event_key: own(self.event_key),
            ticket: own(self.ticket),
            encrypt: own(self.encrypt),
            msg_id: own(self.msg_id),
            content: own(self.content),
        }
    }
}

/// The field an element name stands for, as [`CallbackXml::slot`] numbers them.
fn field_of(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"ToUserName" => 0,
        b"FromUserName" => 1,
        b"CreateTime" => 2,
        b"MsgType" => 3,
        b"Event" => 4,
        b"EventKey" => 5,
        b"Ticket" => 6,
        b"Encrypt" => 7,
        b"MsgId" => 8,
        b"Content" => 9,
        _ => return None,
    })
}

/// `part` as text of `body`, when it is a slice of it, as the pieces a reader over a `&str`
/// hands out are. The body was checked to be UTF-8 as a whole, so this checks only that both
/// ends fall on character boundaries, where decoding the piece would check all of it again.
fn slice_of<'a>(body: &'a str, part: &[u8]) -> Option<&'a str> {
    let at = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    body.get(at..at.checked_add(part.len())?)
}

/// A piece of text or CDATA of `body`, borrowed; decoded (checked again) only if the reader
/// ever hands out a piece that is not a slice of the body.
fn text_of<'a>(
    body: &'a str,
    part: &[u8],
    decode: impl FnOnce() -> Result<Cow<'a, str>, XmlError>,
) -> Result<Cow<'a, str>, XmlError> {
    match slice_of(body, part) {
        Some(text) => Ok(Cow::Borrowed(text)),
        None => decode(),
    }
}

/// Appends a piece of a field's text: the first is borrowed, later ones make it owned.
fn append<'a>(text: &mut Option<Cow<'a, str>>, piece: Cow<'a, str>) {
    match text {
        None => *text = Some(piece),
        Some(t) => t.to_mut().push_str(&piece),
    }
}

fn predefined_entity(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

fn malformed(e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

/// Appends `text` as CDATA, splitting any `]]>` so it cannot close the section early.
pub fn push_cdata(out: &mut String, text: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

/// Parses a callback body (already checked to be UTF-8), borrowing the fields' text.
pub fn parse(body: &str) -> Result<CallbackXml<'_>, XmlError> {
    match parse_flat(body) {
        Some(fields) => Ok(fields),
        None => parse_full(body),
    }
}

/// Whether `b` is one of XML's four whitespace characters.
fn is_xml_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Skips XML whitespace from `at`.
fn skip_space(b: &[u8], mut at: usize) -> usize {
    while b.get(at).is_some_and(is_xml_space) {
        at += 1;
    }
    at
}

/// Reads WeChat's flat shape only: optional whitespace, `<xml>`, then children each written
/// `<Name>` + one CDATA section or plain text (no `<`, `&` or `>`) + `</Name>`, with
/// whitespace between them, `</xml>`, optional whitespace. A name is an ASCII letter followed
/// by ASCII letters and digits. Anything else (a declaration, comments, attributes, nested or
/// empty elements, references, mixed text and CDATA) gives `None`, and [`parse_full`] decides.
/// Where this answers, the answer is [`parse_full`]'s.
pub fn parse_flat(body: &str) -> Option<CallbackXml<'_>> {
    let b = body.as_bytes();
    let mut at = skip_space(b, 0);
    if !b.get(at..)?.starts_with(b"<xml>") {
        return None;
    }
    at += 5;
    let mut out = CallbackXml::default();
    loop {
        at = skip_space(b, at);
        let rest = b.get(at..)?;
        if rest.starts_with(b"</xml>") {
            return (skip_space(b, at + 6) == b.len()).then_some(out);
        }
        // `<Name>`
        let name_len = rest
            .get(1..)?
            .iter()
            .position(|c| !c.is_ascii_alphanumeric())?;
        let name = rest.get(1..1 + name_len)?;
        if rest.first() != Some(&b'<')
            || !name.first()?.is_ascii_alphabetic()
            || rest.get(1 + name_len) != Some(&b'>')
        {
            return None;
        }
        at += name_len + 2;
        // One CDATA section, or text up to the next `<`.
        let content = b.get(at..)?;
        let (text, end) = if let Some(cdata) = content.strip_prefix(b"<![CDATA[") {
            let len = CDATA_END.find(cdata)?;
            (body.get(at + 9..at + 9 + len)?, at + 9 + len + 3)
        } else {
            let len = memchr::memchr3(b'<', b'&', b'>', content)?;
            if content.get(len) != Some(&b'<') {
                return None;
            }
            (body.get(at..at + len)?, at + len)
        };
        // `</Name>`
        let close = b.get(end..)?;
        if close.get(..2)? != b"</"
            || close.get(2..2 + name_len)? != name
            || close.get(2 + name_len) != Some(&b'>')
        {
            return None;
        }
        at = end + name_len + 3;
        if let Some(slot) = field_of(name).and_then(|f| out.slot(f)) {
            *slot = Some(Cow::Borrowed(text));
        }
    }
}

/// Parses any callback body with quick-xml (see [`parse`]).
pub fn parse_full(body: &str) -> Result<CallbackXml<'_>, XmlError> {
    let mut reader = Reader::from_str(body);
    reader.config_mut().check_end_names = true;
    let mut out = CallbackXml::default();
    // The element path: depth 1 is <xml>, depth 2 a field.
    let mut depth = 0usize;
    // The field being read (see `field_of`), if it is one of ours, and its text so far.
    let mut current: Option<usize> = None;
    let mut text: Option<Cow<'_, str>> = None;
    let mut seen_root = false;
    loop {
        match reader.read_event().map_err(malformed)? {
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Start(start) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                if depth == 1 {
                    if seen_root || start.name().as_ref() != b"xml" {
                        return Err(XmlError::Root);
                    }
                    seen_root = true;
                } else if depth == 2 {
                    current = field_of(start.name().as_ref());
                    text = None;
                }
            }
            Event::Empty(start) => {
                if depth == 0 {
                    return Err(XmlError::Root);
                }
                if depth == 1
                    && let Some(slot) = field_of(start.name().as_ref()).and_then(|f| out.slot(f))
                {
                    *slot = Some(Cow::Borrowed(""));
                }
            }
            Event::End(_) => {
                if depth == 2
                    && let Some(slot) = current.take().and_then(|f| out.slot(f))
                {
                    *slot = Some(text.take().unwrap_or_default());
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) if depth == 2 => {
                append(
                    &mut text,
                    text_of(body, &t, || t.decode().map_err(malformed))?,
                );
            }
            Event::CData(c) if depth == 2 => {
                append(
                    &mut text,
                    text_of(body, &c, || c.decode().map_err(malformed))?,
                );
            }
            Event::CData(_) if depth <= 1 => {
                return Err(XmlError::Malformed("text outside an element".into()));
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref().map_err(malformed)? {
                    Some(ch) => ch,
                    None => {
                        let name = r.decode().map_err(malformed)?;
                        predefined_entity(&name).ok_or_else(|| XmlError::Entity(name.into()))?
                    }
                };
                match depth {
                    2 => text.get_or_insert_default().to_mut().push(ch),
                    0 | 1 => return Err(XmlError::Malformed("text outside an element".into())),
                    _ => {}
                }
            }
            // Text outside a field: only whitespace (XML's four characters) is allowed.
            Event::Text(t) if depth <= 1 && !t.iter().all(is_xml_space) => {
                return Err(XmlError::Malformed("text outside an element".into()));
            }
            Event::Eof => break,
            // Text of nested elements (depth 3 and more) is not ours to read.
            // Declarations, comments, processing instructions, nested CDATA: ignored.
            _ => {}
        }
    }
    if !seen_root || depth != 0 {
        return Err(XmlError::Root);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBSCRIBE: &str = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
        <FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
        <CreateTime>1409735668</CreateTime>\n\
        <MsgType><![CDATA[event]]></MsgType>\n\
        <Event><![CDATA[subscribe]]></Event>\n\
        <EventKey><![CDATA[qrscene_123123]]></EventKey>\n\
        <Ticket><![CDATA[TICKET]]></Ticket>\n</xml>";

    #[test]
    fn reads_the_sample_subscribe_event() {
        let x = parse(SUBSCRIBE).unwrap();
        assert_eq!(x.to_user_name.as_deref(), Some("gh_10f6c3c3ac5a"));
        assert_eq!(
            x.from_user_name.as_deref(),
            Some("oyORnuP8q7ou2gfYjqLzSIWZf0rs")
        );
        assert_eq!(x.create_time.as_deref(), Some("1409735668"));
        assert_eq!(x.msg_type.as_deref(), Some("event"));
        assert_eq!(x.event.as_deref(), Some("subscribe"));
        assert_eq!(x.event_key.as_deref(), Some("qrscene_123123"));
        assert_eq!(x.ticket.as_deref(), Some("TICKET"));
        assert_eq!(x.encrypt, None);
    }

    #[test]
    fn reads_a_text_message() {
        let body = "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName>\n\
            <FromUserName><![CDATA[oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName>\n\
            <CreateTime>1348831860</CreateTime>\n\
            <MsgType><![CDATA[text]]></MsgType>\n\
            <Content><![CDATA[登录 483920]]></Content>\n\
            <MsgId>1234567890123456</MsgId>\n</xml>";
        let x = parse(body).unwrap();
        assert_eq!(x.msg_type.as_deref(), Some("text"));
        assert_eq!(x.content.as_deref(), Some("登录 483920"));
        assert_eq!(x.msg_id.as_deref(), Some("1234567890123456"));
        assert_eq!(parse_flat(body), Some(parse_full(body).unwrap()));
    }

    #[test]
    fn plain_fields_borrow_the_body_and_pieced_ones_own_their_text() {
        let x = parse(SUBSCRIBE).unwrap();
        assert!(matches!(x.from_user_name, Some(Cow::Borrowed(_))));
        assert!(matches!(x.create_time, Some(Cow::Borrowed("1409735668"))));
        let x = parse("<xml><EventKey>a<![CDATA[b]]>&lt;c</EventKey><Ticket/></xml>").unwrap();
        assert_eq!(x.event_key.as_deref(), Some("ab<c"));
        assert_eq!(x.ticket.as_deref(), Some(""));
        let owned: CallbackXml<'static> = x.clone().into_owned();
        assert_eq!(owned, x);
    }

    #[test]
    fn only_slices_of_the_body_on_character_boundaries_are_borrowed() {
        let body = "<xml>中文</xml>";
        assert_eq!(slice_of(body, &body.as_bytes()[5..11]), Some("中文"));
        // Inside a character, or not a slice of the body at all: decoded instead.
        assert_eq!(slice_of(body, &body.as_bytes()[6..11]), None);
        let elsewhere = String::from("中文");
        assert_eq!(slice_of(body, elsewhere.as_bytes()), None);
        let x =
            parse("<xml><EventKey><![CDATA[场景]]></EventKey><Event>扫码</Event></xml>").unwrap();
        assert_eq!(x.event_key.as_deref(), Some("场景"));
        assert_eq!(x.event.as_deref(), Some("扫码"));
    }

    #[test]
    fn the_flat_reader_takes_wechats_shape_and_leaves_the_rest_to_quick_xml() {
        assert_eq!(parse_flat(SUBSCRIBE), Some(parse_full(SUBSCRIBE).unwrap()));
        let x = parse_flat("<xml><Event>SCAN</Event><EventKey></EventKey></xml>").unwrap();
        assert_eq!(x.event.as_deref(), Some("SCAN"));
        assert_eq!(x.event_key.as_deref(), Some(""));
        for other in [
            "<?xml version=\"1.0\"?><xml><Event>SCAN</Event></xml>",
            "<xml><Event>a&amp;b</Event></xml>",
            "<xml><Event>a<![CDATA[b]]></Event></xml>",
            "<xml><Event a=\"1\">SCAN</Event></xml>",
            "<xml><Event/></xml>",
            "<xml><ScanCodeInfo><ScanType>qrcode</ScanType></ScanCodeInfo></xml>",
            "<xml><!-- c --><Event>SCAN</Event></xml>",
            "<xml><Event>SCAN</Event ></xml>",
            "<xml><Event>a>b</Event></xml>",
            "<xml><Event>SCAN</Evnt></xml>",
            "<xml><Event>SCAN</Event>",
            "<xml></xml><xml></xml>",
            "<root><Event>SCAN</Event></root>",
        ] {
            assert_eq!(parse_flat(other), None, "{other:?}");
        }
        // Those are still read (or refused) by quick-xml.
        assert_eq!(
            parse("<xml><Event>a&amp;b</Event></xml>")
                .unwrap()
                .event
                .as_deref(),
            Some("a&b")
        );
        assert!(parse("<xml><Event>SCAN</Evnt></xml>").is_err());
    }

    /// A field's text: mostly what WeChat writes, sometimes what XML treats specially.
    fn field_text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::prop_oneof![
            4 => "[a-zA-Z0-9 _\u{a0}中]{0,12}",
            1 => "[a-z <>&;#\\]\\[!/\r\n\t]{0,12}",
        ]
    }

    /// Documents in WeChat's shape, each part sometimes a little off it.
    fn near_wechat() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let name = prop_oneof![
            9 => proptest::sample::select(vec![
                "ToUserName", "FromUserName", "CreateTime", "MsgType", "Event", "EventKey",
                "Ticket", "MsgId", "Content", "Encrypt", "Other9", "xml",
            ]),
            1 => proptest::sample::select(vec!["9Bad", "a_b", "", "Event a=\"1\"", "Event/"]),
        ];
        let child = (
            name,
            proptest::bool::weighted(0.9),
            any::<bool>(),
            field_text(),
            prop_oneof![9 => "[ \n]{0,2}", 1 => Just("<!--x-->".to_owned())],
        );
        (
            prop_oneof![8 => "[ \t\r\n]{0,2}", 1 => Just("<?xml?>".to_owned()), 1 => Just("x".to_owned())],
            proptest::collection::vec(child, 0..8),
            proptest::bool::weighted(0.9),
            prop_oneof![8 => "[ \n]{0,2}", 1 => Just("</xml>".to_owned()), 1 => Just("<x/>".to_owned())],
        )
            .prop_map(|(lead, children, close_root, trail)| {
                let mut doc = format!("{lead}<xml>");
                for (name, matched, cdata, text, gap) in children {
                    let close = if matched { name } else { "Other" };
                    if cdata {
                        doc.push_str(&format!("<{name}><![CDATA[{text}]]></{close}>{gap}"));
                    } else {
                        doc.push_str(&format!("<{name}>{text}</{close}>{gap}"));
                    }
                }
                if close_root {
                    doc.push_str("</xml>");
                }
                doc + &trail
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        /// Wherever the flat reader answers, quick-xml's reader gives the same fields.
        #[test]
        fn the_flat_reader_answers_what_quick_xml_answers(doc in near_wechat()) {
            if let Some(flat) = parse_flat(&doc) {
                proptest::prop_assert_eq!(Some(flat), parse_full(&doc).ok(), "{:?}", doc);
            }
        }
    }

    #[test]
    fn only_xml_whitespace_may_stand_between_fields() {
        assert!(parse("<xml>\r\n\t <Event>SCAN</Event>\n</xml>").is_ok());
        // A no-break space or an ideographic space is text, and text is not allowed there.
        for bad in [
            "<xml>\u{a0}<Event>SCAN</Event></xml>",
            "<xml><Event>SCAN</Event>\u{3000}</xml>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn predefined_and_character_references_are_resolved() {
        let x = parse("<xml><EventKey>a&amp;b&#x41;&#66;</EventKey></xml>").unwrap();
        assert_eq!(x.event_key.as_deref(), Some("a&bAB"));
    }

    #[test]
    fn nested_fields_do_not_overwrite_top_level_ones() {
        let x =
            parse("<xml><Event>SCAN</Event><ScanCodeInfo><Event>x</Event></ScanCodeInfo></xml>")
                .unwrap();
        assert_eq!(x.event.as_deref(), Some("SCAN"));
    }

    #[test]
    fn xxe_and_dtds_are_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><EventKey>&xxe;</EventKey></xml>"#;
        assert!(matches!(parse(xxe), Err(XmlError::Dtd)));
        assert!(matches!(
            parse("<xml><EventKey>&xxe;</EventKey></xml>"),
            Err(XmlError::Entity(name)) if name == "xxe"
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn arbitrary_fields_round_trip(key in "[^\\]<>&]{0,60}", user in "[a-zA-Z0-9_-]{1,40}") {
            let xml = format!(
                "<xml><FromUserName><![CDATA[{user}]]></FromUserName><EventKey><![CDATA[{key}]]></EventKey></xml>"
            );
            let parsed = parse(&xml).unwrap();
            proptest::prop_assert_eq!(parsed.from_user_name.as_deref(), Some(user.as_str()));
            proptest::prop_assert_eq!(parsed.event_key.as_deref(), Some(key.as_str()));
        }
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "not xml",
            "<xml><Event>SCAN</Evnt></xml>",
            "<xml><Event>SCAN</Event>",
            "<root><Event>SCAN</Event></root>",
            "<xml></xml><xml></xml>",
            "<xml>x</xml>",
            "<xml>&amp;</xml>",
            "<xml><![CDATA[x]]></xml>",
            "&amp;<xml></xml>",
            "<xml><a><b><c><d><e><f><g><h><i/></h></g></f></e></d></c></b></a></xml>",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
