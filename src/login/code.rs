//! Login codes: the short number a visitor sends to the account as a text message when a QR
//! code cannot be scanned (a phone's own screen) or made (an account without the QR API).
//!
//! This module owns what a code is and how a message is read as an attempt at one. People
//! type codes as they see fit ("登录 483920", "验证码：483 920", full-width digits from a
//! Chinese keyboard), so reading is forgiving about layout and strict about the digits: a
//! message is an attempt only when it holds exactly the code's number of digits, in one run,
//! after at most a short word. Anything else (an order number of another length, a sentence
//! with numbers in it) is not an attempt and stays the account's own business.

use std::fmt;

use rand::Rng;

/// How many digits a login code has (`CODE_DIGITS`): 6 to 10.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeLength(u8);

impl CodeLength {
    /// The shortest length allowed: 10^6 codes keep a guesser's odds small (README).
    pub const MIN: u8 = 6;
    /// The longest: still typed from memory in one glance.
    pub const MAX: u8 = 10;
    /// The default, `CODE_DIGITS` unset.
    pub const DEFAULT: Self = Self(6);

    /// A length in range, or `None`.
    pub const fn new(digits: u8) -> Option<Self> {
        if digits >= Self::MIN && digits <= Self::MAX {
            Some(Self(digits))
        } else {
            None
        }
    }

    /// The number of digits.
    pub const fn get(self) -> usize {
        self.0 as usize
    }

    /// The number of digits, as `CODE_DIGITS` is written.
    pub const fn digits(self) -> u8 {
        self.0
    }
}

/// A login code: ASCII digits, of a [`CodeLength`]. Not a secret once shown (it is on the
/// visitor's screen and in their chat), but a live one is worth a login, so it is not logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LoginCode(String);

impl LoginCode {
    /// A fresh code, every value of the length equally likely (leading zeros included).
    pub fn random(length: CodeLength) -> Self {
        let mut rng = rand::rng();
        Self(
            (0..length.get())
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect(),
        )
    }

    /// A code as the store gives it back: ASCII digits of an allowed length, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let shaped = CodeLength::new(u8::try_from(s.len()).ok()?).is_some()
            && s.bytes().all(|b| b.is_ascii_digit());
        shaped.then(|| Self(s.to_owned()))
    }

    /// The digits, as the first event and the store carry them.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LoginCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginCode(…)")
    }
}

/// What a text message says, read as a login code.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// The message holds exactly one code's worth of digits, perhaps after a short word.
    Attempt(LoginCode),
    /// No code of this length in it: the message is not wxlogin's to answer.
    NotAnAttempt,
}

/// How many characters may come before the digits ("验证码：", "login code: ").
const MAX_WORD_CHARS: usize = 12;
/// How many characters may follow them ("。", "!").
const MAX_TRAILING_CHARS: usize = 3;

/// Reads `text` as an attempt at a code of `length` digits.
pub fn read(text: &str, length: CodeLength) -> Reading {
    let text = text.trim();
    let Some(first) = text.char_indices().find(|&(_, c)| digit(c).is_some()) else {
        return Reading::NotAnAttempt;
    };
    let (word, rest) = text.split_at(first.0);
    if word.chars().count() > MAX_WORD_CHARS {
        return Reading::NotAnAttempt;
    }
    let mut code = String::with_capacity(length.get());
    let mut after = rest.chars().peekable();
    while let Some(&c) = after.peek() {
        if let Some(d) = digit(c) {
            if code.len() == length.get() {
                return Reading::NotAnAttempt;
            }
            code.push(d);
        } else if !separator(c) {
            break;
        }
        after.next();
    }
    let mut trailing = 0;
    for c in after {
        if c.is_alphanumeric() || digit(c).is_some() {
            return Reading::NotAnAttempt;
        }
        trailing += 1;
        if trailing > MAX_TRAILING_CHARS {
            return Reading::NotAnAttempt;
        }
    }
    if code.len() == length.get() {
        Reading::Attempt(LoginCode(code))
    } else {
        Reading::NotAnAttempt
    }
}

/// An ASCII or full-width decimal digit, as ASCII.
fn digit(c: char) -> Option<char> {
    match c {
        '0'..='9' => Some(c),
        '０'..='９' => char::from_u32(u32::from(c) - u32::from('０') + u32::from('0')),
        _ => None,
    }
}

/// What people put between groups of digits: spaces (also the ideographic one) and dashes.
fn separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{3000}' | '\u{a0}' | '-' | '\u{2010}'..='\u{2015}' | '－' | '_' | '·'
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SIX: CodeLength = CodeLength::DEFAULT;

    fn attempt(text: &str) -> Option<String> {
        match read(text, SIX) {
            Reading::Attempt(code) => Some(code.as_str().to_owned()),
            Reading::NotAnAttempt => None,
        }
    }

    #[test]
    fn a_stored_code_parses_back_only_when_it_has_a_codes_shape() {
        let code = LoginCode::random(SIX);
        assert_eq!(LoginCode::parse(code.as_str()), Some(code));
        for bad in [
            "",
            "12345",
            "12345678901",
            "12345a",
            "１２３４５６",
            " 123456",
        ] {
            assert_eq!(LoginCode::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_ways_people_type_a_code_read_as_that_code() {
        for text in [
            "483920",
            " 483920 \n",
            "483 920",
            "483-920",
            "4 8 3 9 2 0",
            "４８３９２０",
            "４８３ ９２０",
            "483　920",
            "登录 483920",
            "登录483920",
            "验证码：483 920",
            "验证码: 483-920。",
            "login code: 483920!",
            "Code 483920",
        ] {
            assert_eq!(attempt(text).as_deref(), Some("483920"), "{text:?}");
        }
    }

    #[test]
    fn messages_without_exactly_one_code_are_not_attempts() {
        for text in [
            "",
            "你好",
            "48392",
            "4839201",
            "13800138000",
            "订单 12345678",
            "483920 退款",
            "483920 and 111",
            "2 apples, 3 pears, 483920",
            "这是一个很长很长的句子然后才是 483920",
            "483920!!!!",
            "483a920",
        ] {
            assert_eq!(attempt(text), None, "{text:?}");
        }
    }

    #[test]
    fn lengths_outside_six_to_ten_are_refused() {
        assert_eq!(CodeLength::new(5), None);
        assert_eq!(CodeLength::new(11), None);
        assert_eq!(CodeLength::new(10).map(CodeLength::get), Some(10));
    }

    #[test]
    fn a_code_is_not_printed_by_debug() {
        let code = LoginCode::random(SIX);
        assert!(!format!("{code:?}").contains(code.as_str()));
    }

    proptest! {
        #[test]
        fn a_fresh_code_has_its_length_and_reads_back_as_itself(digits in 6u8..=10) {
            let length = CodeLength::new(digits).unwrap();
            let code = LoginCode::random(length);
            prop_assert_eq!(code.as_str().len(), length.get());
            prop_assert!(code.as_str().bytes().all(|b| b.is_ascii_digit()));
            prop_assert_eq!(read(code.as_str(), length), Reading::Attempt(code.clone()));
        }

        #[test]
        fn a_code_with_separators_and_full_width_digits_reads_as_the_code(
            digits in proptest::collection::vec(0u8..10, 6),
            layout in proptest::collection::vec((any::<bool>(), prop::sample::select(vec!["", " ", "-", "\u{3000}", " - "])), 6),
            word in prop::sample::select(vec!["", "登录 ", "验证码：", "code: "]),
        ) {
            let mut text = String::from(word);
            for (d, (wide, sep)) in digits.iter().zip(&layout) {
                let c = if *wide { char::from_u32(u32::from('０') + u32::from(*d)) } else { Some(char::from(b'0' + d)) };
                text.extend(c);
                text.push_str(sep);
            }
            let expected: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            prop_assert_eq!(attempt(&text), Some(expected));
        }

        #[test]
        fn reading_any_text_never_panics_and_yields_only_digits(text in "\\PC{0,40}") {
            if let Reading::Attempt(code) = read(&text, SIX) {
                prop_assert_eq!(code.as_str().len(), 6);
                prop_assert!(code.as_str().bytes().all(|b| b.is_ascii_digit()));
            }
        }
    }
}
