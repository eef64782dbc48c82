//! The `xl.cfg(5)` file syntax, as libxlu reads it.
//!
//! A file is a series of settings `KEY = VALUE` or `KEY += VALUE`,
//! separated by newlines or `;`. `#` starts a comment that runs to the end
//! of the line. Keys are `[a-z][._0-9a-z]*`. A value is a string in single
//! or double quotes (with C-like backslash escapes, on one line), a bare
//! number (`[0-9][0-9a-fx]*`, kept as its text), or a list `[ V, V, ]` of
//! values, which may span lines, may nest and may end with a comma.
//!
//! A key set twice keeps its last value. `KEY += VALUE` appends to the
//! value the key had so far: strings are concatenated, lists joined; with
//! no earlier value it is a plain assignment.
//!
//! `xl create guest.cfg KEY=VALUE ...` appends each `KEY=VALUE` to the file
//! as a line of its own; [`Settings::apply_overrides`] does the same, but
//! names them "command line" in messages.

use super::error::{ConfigError, Location, Near, SettingProblem, Source, SyntaxProblem};

/// How a setting was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `KEY = VALUE`.
    Assign,
    /// `KEY += VALUE`.
    Add,
}

/// A value and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The line the value starts on, from 1.
    pub line: u32,
    /// The column the value starts at, in characters from 1.
    pub column: u32,
    /// The value.
    pub kind: ValueKind,
}

/// A string or a list.
///
/// libxlu does not tell numbers from strings: `memory = 512` and
/// `memory = "512"` are the same, and both are read as numbers when the
/// setting wants one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// A quoted string (unescaped) or a bare number (as written).
    String(String),
    /// A list.
    List(Vec<Value>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            ValueKind::String(s) => Some(s),
            ValueKind::List(_) => None,
        }
    }

    /// The items, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match &self.kind {
            ValueKind::String(_) => None,
            ValueKind::List(items) => Some(items),
        }
    }
}

/// One `KEY = VALUE` or `KEY += VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// How it was written.
    pub op: Op,
    /// The value; for `+=`, already joined with the key's earlier value.
    pub value: Value,
    /// The text it was read from.
    pub origin: Source,
    /// The line of the key.
    pub line: u32,
}

impl Setting {
    /// Where the key is.
    pub fn location(&self) -> Location {
        Location {
            origin: self.origin.clone(),
            line: self.line,
            column: None,
        }
    }

    /// Where `value` (this setting's value or one of its list items) is.
    pub fn value_location(&self, value: &Value) -> Location {
        Location {
            origin: self.origin.clone(),
            line: value.line,
            column: None,
        }
    }

    /// An error about this setting's value.
    pub fn error(&self, problem: SettingProblem) -> ConfigError {
        ConfigError::Setting {
            at: self.location(),
            key: self.key.clone(),
            problem,
        }
    }

    /// An error about `value`, this setting's value or one of its list items.
    pub fn error_at(&self, value: &Value, problem: SettingProblem) -> ConfigError {
        ConfigError::Setting {
            at: self.value_location(value),
            key: self.key.clone(),
            problem,
        }
    }

    /// The value as a number, as libxlu reads one: C `strtol` with base 0
    /// (decimal, `0x` hex, `0` octal, an optional sign), the whole string.
    pub fn number(&self) -> Result<i64, ConfigError> {
        let text = match &self.value.kind {
            ValueKind::String(s) => s,
            ValueKind::List(_) => return Err(self.error(SettingProblem::ExpectedNumberFoundList)),
        };
        if self.op == Op::Add {
            return Err(self.error(SettingProblem::AddToNumber));
        }
        parse_c_long(text).map_err(|e| {
            self.error(match e {
                NumberError::Invalid => SettingProblem::ExpectedNumber(text.clone()),
                NumberError::Range => SettingProblem::NumberOutOfRange(text.clone()),
            })
        })
    }

    /// The value as a number in `min..=max`.
    pub fn number_in(&self, min: i64, max: i64) -> Result<i64, ConfigError> {
        let value = self.number()?;
        if value < min {
            return Err(self.error(SettingProblem::TooSmall { value, min }));
        }
        if value > max {
            return Err(self.error(SettingProblem::TooLarge { value, max }));
        }
        Ok(value)
    }

    /// The value as a string.
    pub fn string(&self) -> Result<&str, ConfigError> {
        self.value
            .as_str()
            .ok_or_else(|| self.error(SettingProblem::ExpectedSingleValue))
    }

    /// The value as a list.
    pub fn list(&self) -> Result<&[Value], ConfigError> {
        match &self.value.kind {
            ValueKind::List(items) => Ok(items),
            ValueKind::String(s) => Err(self.error(SettingProblem::ExpectedList(s.clone()))),
        }
    }

    /// The value as a list of strings, each with its value (for its line).
    pub fn string_list(&self) -> Result<Vec<(&str, &Value)>, ConfigError> {
        self.list()?
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .map(|s| (s, item))
                    .ok_or_else(|| self.error_at(item, SettingProblem::ListItemNotString(i + 1)))
            })
            .collect()
    }
}

/// Why a string is not a C `long`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberError {
    Invalid,
    Range,
}

/// `strtol(text, &end, 0)` that must consume all of `text`.
fn parse_c_long(text: &str) -> Result<i64, NumberError> {
    let s = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, hex)
        } else {
            // strtol reads the "0" and stops at the "x".
            return Err(NumberError::Invalid);
        }
    } else if s.starts_with('0') {
        (8, s)
    } else {
        (10, s)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(NumberError::Invalid);
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| NumberError::Range)?;
    if negative {
        if magnitude > i64::MIN.unsigned_abs() {
            return Err(NumberError::Range);
        }
        Ok(0i64.wrapping_sub_unsigned(magnitude))
    } else {
        i64::try_from(magnitude).map_err(|_| NumberError::Range)
    }
}

/// The settings of a configuration file, with any command-line overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The text parsed first (the file).
    origin: Source,
    /// Every setting in the order read; a later one for the same key wins.
    history: Vec<Setting>,
}

impl Settings {
    /// Parses `text`, read from `origin`.
    pub fn parse(origin: Source, text: &str) -> Result<Self, ConfigError> {
        let mut history = Vec::new();
        Parser::new(text, &origin).parse_into(&mut history)?;
        Ok(Settings { origin, history })
    }

    /// The text parsed first (the file), to name in messages about
    /// settings that are missing.
    pub fn origin(&self) -> &Source {
        &self.origin
    }

    /// Applies `xl create`'s `KEY=VALUE` arguments, in order, as if each
    /// were a line appended to the file: a key overrides the file's value,
    /// `KEY+=VALUE` extends it. On error nothing is applied.
    pub fn apply_overrides<S: AsRef<str>>(&mut self, overrides: &[S]) -> Result<(), ConfigError> {
        let text = overrides
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join("\n");
        let mut history = self.history.clone();
        Parser::new(&text, &Source::CommandLine).parse_into(&mut history)?;
        self.history = history;
        Ok(())
    }

    /// The setting in force for `key`: the last one read.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.history.iter().rev().find(|s| s.key == key)
    }

    /// The settings in force, one per key, in the order their keys first
    /// appeared.
    pub fn effective(&self) -> Vec<&Setting> {
        let mut keys: Vec<&str> = Vec::new();
        for setting in &self.history {
            if !keys.contains(&setting.key.as_str()) {
                keys.push(&setting.key);
            }
        }
        keys.into_iter().filter_map(|key| self.get(key)).collect()
    }

    /// Every setting in the order read, overridden ones included.
    pub fn history(&self) -> &[Setting] {
        &self.history
    }

    /// `key` as a string, if set.
    pub fn string(&self, key: &str) -> Result<Option<&str>, ConfigError> {
        self.get(key).map(Setting::string).transpose()
    }

    /// `key` as a number, if set.
    pub fn number(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        self.get(key).map(Setting::number).transpose()
    }

    /// `key` as a number in `min..=max`, if set.
    pub fn number_in(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        self.get(key).map(|s| s.number_in(min, max)).transpose()
    }

    /// `key` as a boolean (a number: 0 is false, anything else true), if set.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        Ok(self.number(key)?.map(|n| n != 0))
    }

    /// `key` as a list, if set.
    pub fn list(&self, key: &str) -> Result<Option<&[Value]>, ConfigError> {
        self.get(key).map(Setting::list).transpose()
    }
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ident,
    Number,
    Str,
    Comma,
    Open,
    Close,
    Assign,
    Add,
    Semicolon,
    Newline,
    End,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Ident => "identifier",
            Kind::Number => "number",
            Kind::Str => "string",
            Kind::Comma => "','",
            Kind::Open => "'['",
            Kind::Close => "']'",
            Kind::Assign => "'='",
            Kind::Add => "'+='",
            Kind::Semicolon => "';'",
            Kind::Newline => "newline",
            Kind::End => "end of file",
        }
    }
}

#[derive(Debug, Clone)]
struct Token<'a> {
    kind: Kind,
    /// The text as written.
    raw: &'a str,
    /// Identifiers and numbers as written, strings unescaped.
    value: String,
    line: u32,
    column: u32,
}

impl Token<'_> {
    fn near(&self) -> Near {
        match self.kind {
            Kind::Newline => Near::Newline,
            Kind::End => Near::EndOfFile,
            _ => Near::Text(self.raw.to_owned()),
        }
    }
}

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
    line: u32,
    line_start: usize,
    origin: &'a Source,
}

impl<'a> Lexer<'a> {
    fn column_at(&self, pos: usize) -> u32 {
        let chars = self.text[self.line_start..pos].chars().count();
        u32::try_from(chars).unwrap_or(u32::MAX).saturating_add(1)
    }

    fn error_at(&self, pos: usize, near: Near, problem: SyntaxProblem) -> ConfigError {
        ConfigError::Syntax {
            at: Location {
                origin: self.origin.clone(),
                line: self.line,
                column: Some(self.column_at(pos)),
            },
            near,
            problem,
        }
    }

    fn token(&mut self, kind: Kind, start: usize, end: usize, value: String) -> Token<'a> {
        let token = Token {
            kind,
            raw: &self.text[start..end],
            value,
            line: self.line,
            column: self.column_at(start),
        };
        self.pos = end;
        token
    }

    /// The end of the run of bytes from `start` that satisfy `pred`.
    fn run_end(&self, start: usize, pred: impl Fn(u8) -> bool) -> usize {
        let bytes = self.text.as_bytes();
        let mut end = start;
        while end < bytes.len() && pred(bytes[end]) {
            end += 1;
        }
        end
    }

    /// A lexical error at `start`: libxlu shows the text up to the next
    /// blank.
    fn lexical_error(&self, start: usize, problem: SyntaxProblem) -> ConfigError {
        let first = self.text[start..].chars().next().map_or(0, char::len_utf8);
        let end = self.run_end(start + first, |b| !matches!(b, b' ' | b'\t' | b'\n'));
        self.error_at(start, Near::Text(self.text[start..end].to_owned()), problem)
    }

    fn next_token(&mut self) -> Result<Token<'a>, ConfigError> {
        let bytes = self.text.as_bytes();
        loop {
            let start = self.pos;
            let Some(&b) = bytes.get(start) else {
                return Ok(self.token(Kind::End, start, start, String::new()));
            };
            match b {
                b' ' | b'\t' => self.pos += 1,
                b'\n' | b'#' => {
                    let newline = self.run_end(start, |b| b != b'\n');
                    let token = self.token(Kind::Newline, start, newline, String::new());
                    // libxlu insists on the newline after a comment; a
                    // comment on the last line without one is taken too.
                    if newline < bytes.len() {
                        self.pos = newline + 1;
                        self.line += 1;
                        self.line_start = self.pos;
                    }
                    return Ok(token);
                }
                b'a'..=b'z' => {
                    let end = self.run_end(
                        start,
                        |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_'),
                    );
                    let value = self.text[start..end].to_owned();
                    return Ok(self.token(Kind::Ident, start, end, value));
                }
                b'0'..=b'9' => {
                    let end =
                        self.run_end(start, |b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'x'));
                    let value = self.text[start..end].to_owned();
                    return Ok(self.token(Kind::Number, start, end, value));
                }
                b',' | b'[' | b']' | b'=' | b';' => {
                    let kind = match b {
                        b',' => Kind::Comma,
                        b'[' => Kind::Open,
                        b']' => Kind::Close,
                        b'=' => Kind::Assign,
                        _ => Kind::Semicolon,
                    };
                    return Ok(self.token(kind, start, start + 1, String::new()));
                }
                b'+' if bytes.get(start + 1) == Some(&b'=') => {
                    return Ok(self.token(Kind::Add, start, start + 2, String::new()));
                }
                b'\'' | b'"' => return self.string(start, b),
                b'\r' => return Err(self.lexical_error(start, SyntaxProblem::CarriageReturn)),
                _ => {
                    let likely_python = matches!(b, b'+' | b'-' | b'.' | b'(' | b')' | b':');
                    return Err(self.lexical_error(start, SyntaxProblem::Lexical { likely_python }));
                }
            }
        }
    }

    /// A string quoted by `quote`, starting at `start`.
    fn string(&mut self, start: usize, quote: u8) -> Result<Token<'a>, ConfigError> {
        let bytes = self.text.as_bytes();
        let mut end = start + 1;
        loop {
            match bytes.get(end) {
                Some(&b) if b == quote => break,
                Some(b'\\') if !matches!(bytes.get(end + 1), None | Some(b'\n')) => {
                    let escaped = self.text[end + 1..]
                        .chars()
                        .next()
                        .map_or(1, char::len_utf8);
                    end += 1 + escaped;
                }
                None | Some(b'\n' | b'\\') => {
                    let line_end = self.run_end(start, |b| b != b'\n');
                    return Err(self.error_at(
                        start,
                        Near::Text(self.text[start..line_end].to_owned()),
                        SyntaxProblem::UnterminatedString,
                    ));
                }
                Some(_) => end += 1,
            }
        }
        let value = self.unescape(start + 1, end)?;
        Ok(self.token(Kind::Str, start, end + 1, value))
    }

    /// The text between `from` and `to` with its backslash escapes
    /// replaced.
    fn unescape(&self, from: usize, to: usize) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(to - from);
        let mut chars = self.text[from..to].char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, escaped)) = chars.next() else {
                // The lexer only ends a string after a complete escape.
                break;
            };
            out.push(match escaped {
                '"' | '\'' | '\\' => escaped,
                'a' => '\x07',
                'b' => '\x08',
                'f' => '\x0c',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                'v' => '\x0b',
                _ => {
                    let at = from + i;
                    let problem = if escaped == 'x' || ('0'..='7').contains(&escaped) {
                        SyntaxProblem::NumericEscape
                    } else {
                        SyntaxProblem::InvalidEscape
                    };
                    let near = self.text[at..at + 1 + escaped.len_utf8()].to_owned();
                    return Err(self.error_at(at, Near::Text(near), problem));
                }
            });
        }
        Ok(out)
    }
}

/// The grammar of libxlu's `libxlu_cfg_y.y`, one token of lookahead.
struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<Token<'a>>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, origin: &'a Source) -> Self {
        Parser {
            lexer: Lexer {
                text,
                pos: 0,
                line: 1,
                line_start: 0,
                origin,
            },
            peeked: None,
        }
    }

    fn next(&mut self) -> Result<Token<'a>, ConfigError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    fn peek_kind(&mut self) -> Result<Kind, ConfigError> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next_token()?);
        }
        Ok(self.peeked.as_ref().map_or(Kind::End, |t| t.kind))
    }

    fn unexpected(&self, token: &Token<'_>, expected: &'static str) -> ConfigError {
        ConfigError::Syntax {
            at: Location {
                origin: self.lexer.origin.clone(),
                line: token.line,
                column: Some(token.column),
            },
            near: token.near(),
            problem: SyntaxProblem::Unexpected {
                found: token.kind.describe(),
                expected,
            },
        }
    }

    fn skip_newlines(&mut self) -> Result<(), ConfigError> {
        while self.peek_kind()? == Kind::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn parse_into(mut self, history: &mut Vec<Setting>) -> Result<(), ConfigError> {
        loop {
            let token = self.next()?;
            match token.kind {
                Kind::End => return Ok(()),
                Kind::Newline | Kind::Semicolon => {}
                Kind::Ident => {
                    let op_token = self.next()?;
                    let op = match op_token.kind {
                        Kind::Assign => Op::Assign,
                        Kind::Add => Op::Add,
                        _ => return Err(self.unexpected(&op_token, "'=' or '+='")),
                    };
                    let value = self.value()?;
                    store(history, token, op, value, self.lexer.origin)?;
                    let end = self.next()?;
                    match end.kind {
                        Kind::End => return Ok(()),
                        Kind::Newline | Kind::Semicolon => {}
                        _ => return Err(self.unexpected(&end, "newline or ';'")),
                    }
                }
                _ => return Err(self.unexpected(&token, "identifier")),
            }
        }
    }

    fn value(&mut self) -> Result<Value, ConfigError> {
        let token = self.next()?;
        let kind = match token.kind {
            Kind::Str | Kind::Number => ValueKind::String(token.value),
            Kind::Open => ValueKind::List(self.list_items()?),
            _ => return Err(self.unexpected(&token, "a string, a number or '['")),
        };
        Ok(Value {
            line: token.line,
            column: token.column,
            kind,
        })
    }

    /// The items of a list whose `[` has been read, and its `]`.
    fn list_items(&mut self) -> Result<Vec<Value>, ConfigError> {
        let mut items = Vec::new();
        self.skip_newlines()?;
        if self.peek_kind()? == Kind::Close {
            self.next()?;
            return Ok(items);
        }
        loop {
            items.push(self.value()?);
            self.skip_newlines()?;
            let token = self.next()?;
            match token.kind {
                Kind::Close => return Ok(items),
                Kind::Comma => {
                    self.skip_newlines()?;
                    if self.peek_kind()? == Kind::Close {
                        self.next()?;
                        return Ok(items);
                    }
                }
                _ => return Err(self.unexpected(&token, "',' or ']'")),
            }
        }
    }
}

/// Records a setting, joining a `+=` value with the key's earlier one.
fn store(
    history: &mut Vec<Setting>,
    key: Token<'_>,
    op: Op,
    mut value: Value,
    origin: &Source,
) -> Result<(), ConfigError> {
    if op == Op::Add {
        if let Some(previous) = history.iter().rev().find(|s| s.key == key.value) {
            match (&previous.value.kind, &mut value.kind) {
                (ValueKind::String(before), ValueKind::String(after)) => {
                    after.insert_str(0, before);
                }
                (ValueKind::List(before), ValueKind::List(after)) => {
                    after.splice(0..0, before.iter().cloned());
                }
                _ => {
                    return Err(ConfigError::Setting {
                        at: Location {
                            origin: origin.clone(),
                            line: key.line,
                            column: Some(key.column),
                        },
                        key: key.value,
                        problem: SettingProblem::AddMismatch,
                    })
                }
            }
        }
    }
    history.push(Setting {
        key: key.value,
        op,
        value,
        origin: origin.clone(),
        line: key.line,
    });
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn file(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(Source::File("guest.cfg".into()), text)
    }

    fn string_of(settings: &Settings, key: &str) -> String {
        settings.string(key).unwrap().unwrap().to_owned()
    }

    fn strings(value: &Value) -> Vec<&str> {
        value
            .as_list()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    fn error_text(text: &str) -> String {
        file(text).unwrap_err().to_string()
    }

    #[test]
    fn settings_separated_by_newlines_and_semicolons() {
        let s = file("name=\"h0\"\ntype='pv'; memory = 512;vcpus=2\n").unwrap();

        assert_eq!(string_of(&s, "name"), "h0");
        assert_eq!(string_of(&s, "type"), "pv");
        assert_eq!(s.number("memory").unwrap(), Some(512));
        assert_eq!(s.number("vcpus").unwrap(), Some(2));
        assert_eq!(s.get("memory").unwrap().line, 2);
    }

    #[test]
    fn last_setting_needs_no_newline_and_empty_files_parse() {
        assert_eq!(file("memory=1").unwrap().number("memory").unwrap(), Some(1));
        assert!(file("").unwrap().effective().is_empty());
        assert!(file("\n\n;;\n").unwrap().effective().is_empty());
    }

    #[test]
    fn comments_run_to_end_of_line_anywhere() {
        let s = file(
            "# header\nname = 'a' # trailing\n  # indented\ndisk = [ # open\n 'x', # item\n # alone\n]\n# no newline at end",
        )
        .unwrap();

        assert_eq!(string_of(&s, "name"), "a");
        assert_eq!(strings(&s.get("disk").unwrap().value), ["x"]);
    }

    #[test]
    fn hash_inside_quotes_is_not_a_comment() {
        let s = file("extra = 'a#b' # c\n").unwrap();

        assert_eq!(string_of(&s, "extra"), "a#b");
    }

    #[test]
    fn keys_may_have_digits_dots_and_underscores() {
        let s = file("device_model_version='x'\na.b_2='y'\n").unwrap();

        assert_eq!(string_of(&s, "device_model_version"), "x");
        assert_eq!(string_of(&s, "a.b_2"), "y");
    }

    #[test]
    fn strings_take_either_quote_and_escapes() {
        let s = file(
            r#"a = "it's \"q\"" ; b = 'say "hi" \'x\''; c = "t\tn\nbs\\ a\a b\b f\f r\r v\v""#,
        )
        .unwrap();

        assert_eq!(string_of(&s, "a"), "it's \"q\"");
        assert_eq!(string_of(&s, "b"), "say \"hi\" 'x'");
        assert_eq!(string_of(&s, "c"), "t\tn\nbs\\ a\x07 b\x08 f\x0c r\r v\x0b");
    }

    #[test]
    fn strings_keep_non_ascii_text() {
        let s = file("name = 'gäst-€'\n").unwrap();

        assert_eq!(string_of(&s, "name"), "gäst-€");
    }

    #[test]
    fn bad_escapes_are_errors() {
        assert_eq!(
            error_text("a = 'x\\qy'\n"),
            "guest.cfg:1:7: config parsing error near `\\q': invalid character after backslash in quoted string"
        );
        assert!(
            error_text("a = 'x\\x41'\n").contains("numerical character escapes are not supported")
        );
        assert!(
            error_text("a = 'x\\101'\n").contains("numerical character escapes are not supported")
        );
    }

    #[test]
    fn unterminated_strings_are_errors() {
        assert_eq!(
            error_text("name = 'abc\nmemory = 1\n"),
            "guest.cfg:1:8: config parsing error near `'abc': unterminated quoted string"
        );
        assert!(error_text("name = \"abc").contains("unterminated quoted string"));
        // A backslash cannot escape the end of the line.
        assert!(error_text("name = 'abc\\\n'").contains("unterminated quoted string"));
    }

    #[test]
    fn numbers_are_kept_as_text() {
        let s = file("a = 0x1f\nb = 010\nc = 1abc\n").unwrap();

        assert_eq!(string_of(&s, "a"), "0x1f");
        assert_eq!(s.number("a").unwrap(), Some(31));
        assert_eq!(s.number("b").unwrap(), Some(8));
        assert!(s.number("c").is_err());
    }

    #[test]
    fn numbers_follow_strtol_base_zero() {
        assert_eq!(parse_c_long("42"), Ok(42));
        assert_eq!(parse_c_long("  -42"), Ok(-42));
        assert_eq!(parse_c_long("+7"), Ok(7));
        assert_eq!(parse_c_long("0"), Ok(0));
        assert_eq!(parse_c_long("0x10"), Ok(16));
        assert_eq!(parse_c_long("0X1F"), Ok(31));
        assert_eq!(parse_c_long("017"), Ok(15));
        assert_eq!(parse_c_long("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_c_long("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_c_long("9223372036854775808"), Err(NumberError::Range));
        assert_eq!(parse_c_long("08"), Err(NumberError::Invalid));
        assert_eq!(parse_c_long("0x"), Err(NumberError::Invalid));
        assert_eq!(parse_c_long(""), Err(NumberError::Invalid));
        assert_eq!(parse_c_long("12 "), Err(NumberError::Invalid));
        assert_eq!(parse_c_long("512M"), Err(NumberError::Invalid));
        assert_eq!(parse_c_long("-"), Err(NumberError::Invalid));
    }

    #[test]
    fn quoted_numbers_are_numbers() {
        let s = file("memory = '512'\n").unwrap();

        assert_eq!(s.number("memory").unwrap(), Some(512));
    }

    #[test]
    fn lists_span_lines_nest_and_take_trailing_commas() {
        let s = file(
            "disk = [\n    'a',\n    'b'  ,\n\n    'c',\n]\nempty = [ ]\nnested = [ [ 1, 2 ], '3', [] ]\none = ['x']\n",
        )
        .unwrap();

        let disk = &s.get("disk").unwrap().value;
        assert_eq!(strings(disk), ["a", "b", "c"]);
        let lines: Vec<u32> = disk.as_list().unwrap().iter().map(|v| v.line).collect();
        assert_eq!(lines, [2, 3, 5]);
        assert_eq!(s.list("empty").unwrap().unwrap().len(), 0);
        let nested = s.list("nested").unwrap().unwrap();
        assert_eq!(strings(&nested[0]), ["1", "2"]);
        assert_eq!(nested[1].as_str(), Some("3"));
        assert_eq!(nested[2].as_list().map(<[Value]>::len), Some(0));
        assert_eq!(strings(&s.get("one").unwrap().value), ["x"]);
    }

    #[test]
    fn list_syntax_errors() {
        assert_eq!(
            error_text("disk = [ 'a' 'b' ]\n"),
            "guest.cfg:1:14: config parsing error near `'b'': syntax error, unexpected string, expecting ',' or ']'"
        );
        assert!(error_text("disk = [ , ]\n").contains("unexpected ','"));
        assert!(error_text("disk = [ 'a',, ]\n").contains("unexpected ','"));
        assert!(error_text("disk = [ 'a'; 'b' ]\n").contains("unexpected ';'"));
        assert!(error_text("disk = [ 'a'\n")
            .contains("near end of file: syntax error, unexpected end of file"));
    }

    #[test]
    fn a_key_set_twice_keeps_its_last_value() {
        let s = file("memory = 256\nname='x'\nmemory = 512\n").unwrap();

        assert_eq!(s.number("memory").unwrap(), Some(512));
        assert_eq!(s.get("memory").unwrap().line, 3);
        let keys: Vec<&str> = s.effective().iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["memory", "name"]);
        assert_eq!(s.history().len(), 3);
    }

    #[test]
    fn add_appends_to_strings_and_lists() {
        let s = file(
            "extra = 'console=hvc0'\nextra += ' quiet'\ndisk = ['a']\ndisk += ['b', 'c']\nnew += 'x'\nlst += ['y']\n",
        )
        .unwrap();

        assert_eq!(string_of(&s, "extra"), "console=hvc0 quiet");
        assert_eq!(strings(&s.get("disk").unwrap().value), ["a", "b", "c"]);
        assert_eq!(string_of(&s, "new"), "x");
        assert_eq!(strings(&s.get("lst").unwrap().value), ["y"]);
        // The joined list keeps each item's own line.
        let lines: Vec<u32> = s
            .list("disk")
            .unwrap()
            .unwrap()
            .iter()
            .map(|v| v.line)
            .collect();
        assert_eq!(lines, [3, 4, 4]);
    }

    #[test]
    fn add_of_list_to_string_is_an_error() {
        assert_eq!(
            error_text("disk = 'a'\ndisk += ['b']\n"),
            "guest.cfg:2:1: disk: can't add [list] to \"string\" or vice versa"
        );
        assert!(error_text("extra = ['a']\nextra += 'b'\n").contains("can't add"));
    }

    #[test]
    fn add_to_a_number_is_refused_when_read_as_one() {
        let s = file("memory = 512\nmemory += 1\n").unwrap();

        assert_eq!(
            s.number("memory").unwrap_err().to_string(),
            "guest.cfg:2: memory: can't use += with numbers"
        );
    }

    #[test]
    fn lexical_errors_name_line_column_and_text() {
        assert_eq!(
            error_text("name = 'a'\nmemory = -1\n"),
            "guest.cfg:2:10: config parsing error near `-1': lexical error (this looks like Python, which \
             xl.cfg files no longer support: see https://wiki.xen.org/wiki/PythonInXlConfig)"
        );
        assert_eq!(
            error_text("Memory = 1\n"),
            "guest.cfg:1:1: config parsing error near `Memory': lexical error"
        );
        assert!(error_text("memory = 512M\n").contains("near `M': lexical error"));
        assert!(error_text("memory = 1.5\n").contains("near `.5': lexical error"));
        assert!(error_text("name = 'a'\r\n").contains("carriage return"));
        assert!(error_text("memory + 1\n").contains("lexical error"));
    }

    #[test]
    fn syntax_errors_name_line_column_and_token() {
        assert_eq!(
            error_text("name = 'a'\n\nmemory 512\n"),
            "guest.cfg:3:8: config parsing error near `512': syntax error, unexpected number, expecting '=' or '+='"
        );
        assert_eq!(
            error_text("a = 1 b = 2\n"),
            "guest.cfg:1:7: config parsing error near `b': syntax error, unexpected identifier, expecting newline or ';'"
        );
        assert_eq!(
            error_text("type = pv\n"),
            "guest.cfg:1:8: config parsing error near `pv': syntax error, unexpected identifier, expecting a string, a number or '['"
        );
        assert_eq!(
            error_text("memory =\nvcpus = 1\n"),
            "guest.cfg:1:9: config parsing error near <newline>: syntax error, unexpected newline, expecting a string, a number or '['"
        );
        assert!(error_text("= 1\n").contains("unexpected '=', expecting identifier"));
        assert!(error_text("'a' = 1\n").contains("unexpected string, expecting identifier"));
    }

    #[test]
    fn errors_after_multibyte_text_count_columns_in_characters() {
        assert!(error_text("name = 'ü' x\n").starts_with("guest.cfg:1:12:"));
    }

    #[test]
    fn overrides_replace_and_extend_file_settings() {
        let mut s = file("name = 'a'\nmemory = 512\nextra = 'quiet'\ndisk = ['x']\n").unwrap();

        s.apply_overrides(&[
            "memory=1024",
            "extra+=' debug'",
            "disk+=['y']",
            "vcpus=2; maxvcpus=4",
        ])
        .unwrap();

        assert_eq!(s.number("memory").unwrap(), Some(1024));
        assert_eq!(string_of(&s, "extra"), "quiet debug");
        assert_eq!(strings(&s.get("disk").unwrap().value), ["x", "y"]);
        assert_eq!(s.number("maxvcpus").unwrap(), Some(4));
        let memory = s.get("memory").unwrap();
        assert_eq!(memory.origin, Source::CommandLine);
        assert_eq!(memory.line, 1);
        assert_eq!(s.get("vcpus").unwrap().line, 4);
        assert_eq!(
            s.get("name").unwrap().origin,
            Source::File("guest.cfg".into())
        );
    }

    #[test]
    fn override_errors_name_the_command_line_and_apply_nothing() {
        let mut s = file("memory = 512\n").unwrap();

        let err = s.apply_overrides(&["vcpus=2", "memory=abc"]).unwrap_err();

        assert_eq!(
            err.to_string(),
            "command line:2:8: config parsing error near `abc': syntax error, unexpected identifier, \
             expecting a string, a number or '['"
        );
        assert_eq!(s.number("vcpus").unwrap(), None);

        s.apply_overrides(&["memory='abc'"]).unwrap();
        assert_eq!(
            s.number("memory").unwrap_err().to_string(),
            "command line:1: memory: expected a number, found string \"abc\""
        );
    }

    #[test]
    fn type_errors_name_key_and_line() {
        let s = file("name = 'x'\nmemory = 'abc'\ndisk = 'notalist'\nkernel = ['a']\nvcpus = [1]\nmaxmem = '1 '\n")
            .unwrap();

        assert_eq!(
            s.number("memory").unwrap_err().to_string(),
            "guest.cfg:2: memory: expected a number, found string \"abc\""
        );
        assert_eq!(
            s.list("disk").unwrap_err().to_string(),
            "guest.cfg:3: disk: expected a list, found string \"notalist\""
        );
        assert_eq!(
            s.string("kernel").unwrap_err().to_string(),
            "guest.cfg:4: kernel: expected a single value, found a list"
        );
        assert_eq!(
            s.number("vcpus").unwrap_err().to_string(),
            "guest.cfg:5: vcpus: expected a number, found a list"
        );
        assert!(s.number("maxmem").is_err());
    }

    #[test]
    fn bounded_numbers_and_booleans() {
        let s = file("a = 5\nb = 0\nc = 0x10\n").unwrap();

        assert_eq!(s.number_in("a", 1, 10).unwrap(), Some(5));
        assert_eq!(
            s.number_in("a", 6, 10).unwrap_err().to_string(),
            "guest.cfg:1: a: value 5 is smaller than the minimum 6"
        );
        assert_eq!(
            s.number_in("a", 0, 4).unwrap_err().to_string(),
            "guest.cfg:1: a: value 5 is greater than the maximum 4"
        );
        assert_eq!(s.boolean("a").unwrap(), Some(true));
        assert_eq!(s.boolean("b").unwrap(), Some(false));
        assert_eq!(s.boolean("c").unwrap(), Some(true));
        assert_eq!(s.boolean("absent").unwrap(), None);
        assert_eq!(
            s.number("huge").unwrap(),
            None,
            "absent keys are not errors"
        );
    }

    #[test]
    fn number_out_of_range() {
        let s = file("memory = 99999999999999999999\n").unwrap();

        assert_eq!(
            s.number("memory").unwrap_err().to_string(),
            "guest.cfg:1: memory: the number \"99999999999999999999\" is out of range"
        );
    }

    #[test]
    fn string_lists_report_items_that_are_lists() {
        let s = file("disk = [\n 'a',\n ['b'],\n]\n").unwrap();

        assert_eq!(
            s.get("disk")
                .unwrap()
                .string_list()
                .unwrap_err()
                .to_string(),
            "guest.cfg:3: disk: item 2 of the list is a list, expected a string"
        );
    }

    /// A small deterministic generator, so the robustness test needs no
    /// extra crates.
    pub(crate) fn pseudo_random_texts(alphabet: &[&str], count: usize, seed: u64) -> Vec<String> {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        (0..count)
            .map(|_| {
                let len = next() % 24;
                (0..len)
                    .map(|_| alphabet[next() % alphabet.len()])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let alphabet = [
            "a", "memory", "=", "+=", "+", "[", "]", ",", ";", "\n", "#", " ", "'", "\"", "\\",
            "x", "0", "0x", "ü", "\r", "-", "'s'", "\\n", "\\x4", "\\0",
        ];
        for text in pseudo_random_texts(&alphabet, 20_000, 1) {
            if let Ok(mut s) = file(&text) {
                let _ = s.apply_overrides(&[text.as_str()]);
                for setting in s.effective() {
                    let _ = setting.number();
                    let _ = setting.string_list();
                }
            }
        }
    }
}
