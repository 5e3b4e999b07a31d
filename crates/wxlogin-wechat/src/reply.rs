//! Passive replies: what the user sees in WeChat right after the scan.

use super::xml::push_cdata;

/// A text reply to `openid` from the account `account` (the callback's `ToUserName`).
pub fn text_reply(openid: &str, account: &str, create_time: i64, content: &str) -> String {
    let mut out = String::with_capacity(160 + content.len());
    out.push_str("<xml><ToUserName>");
    push_cdata(&mut out, openid);
    out.push_str("</ToUserName><FromUserName>");
    push_cdata(&mut out, account);
    out.push_str("</FromUserName><CreateTime>");
    out.push_str(&create_time.to_string());
    out.push_str("</CreateTime><MsgType><![CDATA[text]]></MsgType><Content>");
    push_cdata(&mut out, content);
    out.push_str("</Content></xml>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml::parse;

    #[test]
    fn a_text_reply_has_the_fields_wechat_expects() {
        let xml = text_reply("oUser", "gh_1", 1_409_735_669, "已在网页登录 ]]> ok");
        let parsed = parse(&xml).unwrap();
        assert_eq!(parsed.to_user_name.as_deref(), Some("oUser"));
        assert_eq!(parsed.from_user_name.as_deref(), Some("gh_1"));
        assert_eq!(parsed.create_time.as_deref(), Some("1409735669"));
        assert_eq!(parsed.msg_type.as_deref(), Some("text"));
        assert!(xml.contains("<Content><![CDATA[已在网页登录 ]]]]><![CDATA[> ok]]></Content>"));
    }
}
