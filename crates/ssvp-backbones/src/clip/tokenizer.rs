//! OpenAI CLIP byte-level BPE tokenizer, reproducing `simple_tokenizer.py` id for id.
//!
//! Pipeline (`encode`): text cleanup, pre-tokenisation regex, byte-to-unicode mapping with a
//! `</w>` end-of-word marker, greedy lowest-rank BPE merges. The vocabulary is the MIT-licensed
//! `bpe_simple_vocab_16e6.txt.gz` (sha256 `924691ac…d6804a`, from the `open-clip-torch` 3.3.0
//! wheel), embedded and decompressed once.
//!
//! Cleanup follows OpenAI: `ftfy.fix_text`, `html.unescape` twice, strip, collapse whitespace,
//! strip, lowercase. Of ftfy 6's default fixes we implement, per line and repeated to a fixed
//! point as ftfy does: HTML entity decoding (skipped from the first line containing `<` on),
//! C1 controls as Windows-1252, Latin ligatures, full/half-width forms, curly quotes, line
//! breaks, ANSI terminal escapes, control characters and NFC normalisation. Not implemented:
//! ftfy's statistical mojibake repair (`fix_encoding`, e.g. `"cafÃ©"` -> `"café"`), which only
//! fires on text that looks like UTF-8 decoded with a legacy code page. `html.unescape` is
//! reproduced fully: all 2,231 HTML5 named references (with and without `;`, longest-prefix
//! rule), and every numeric `&#NN;` / `&#xNN;` form with Python's replacement rules.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};

use icu_normalizer::ComposingNormalizerBorrowed;
use regex::Regex;

/// Id of `<|startoftext|>`.
pub const SOT: u32 = 49406;
/// Id of `<|endoftext|>`.
pub const EOT: u32 = 49407;
/// CLIP's text context length.
pub const CONTEXT_LENGTH: usize = 77;
/// Number of merges used from the vocabulary file (lines 2..=48895).
const NUM_MERGES: usize = 49152 - 256 - 2;

const VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");
const HTML5_ENTITIES: &str = include_str!("../../assets/html5_entities.tsv");

/// What can go wrong tokenizing.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The embedded vocabulary file could not be parsed.
    #[error("invalid BPE vocabulary: {0}")]
    Vocab(String),
    /// The text does not fit the context (OpenAI's behaviour without `truncate=True`).
    #[error("text of {tokens} tokens (with start/end) exceeds the context length {context_length}: {text:?}")]
    TooLong {
        /// The text as given.
        text: String,
        /// Its length in tokens, start and end included.
        tokens: usize,
        /// The context length it had to fit.
        context_length: usize,
    },
    /// A context too short for start and end tokens.
    #[error("context length must be at least 2, got {0}")]
    ContextLength(usize),
    /// A token spelling that has no id.
    #[error("token {0:?} is not in the vocabulary")]
    UnknownToken(String),
    /// A prompt placeholder that encodes to nothing.
    #[error("placeholder {0:?} must encode to at least one token")]
    EmptyPlaceholder(String),
}

/// `Result` with [`TokenizerError`].
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// The CLIP tokenizer. Cheap to share (`Sync`); the BPE cache sits behind a mutex.
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: Vec<String>,
    ranks: HashMap<(String, String), u32>,
    byte_encoder: [char; 256],
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

/// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, the other 68 bytes to U+0100.. in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1")
        } else {
            let c = char::from_u32(next).expect("valid code point");
            next += 1;
            c
        };
    }
    table
}

/// Vocabulary order: the printable bytes (as listed by `bytes_to_unicode`, i.e. the printable
/// ranges first, then the remapped ones in byte order).
fn byte_vocab_order(table: &[char; 256]) -> Vec<char> {
    let mut printable: Vec<char> = Vec::with_capacity(256);
    let mut others: Vec<char> = Vec::new();
    for (b, &c) in table.iter().enumerate() {
        if c as u32 == b as u32 {
            printable.push(c);
        } else {
            others.push(c);
        }
    }
    printable.extend(others);
    printable
}

fn decompressed_vocab() -> Result<&'static str> {
    static TEXT: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    })
    .as_deref()
    .map_err(|e| TokenizerError::Vocab(e.clone()))
}

impl ClipTokenizer {
    /// The OpenAI vocabulary embedded in the crate.
    pub fn openai() -> Result<Self> {
        let text = decompressed_vocab()?;
        let mut lines = text.split('\n');
        let header = lines.next().unwrap_or_default();
        // The file's first line is `"bpe_simple_vocab_16e6.txt#version: 0.2` (a stray file name
        // before the usual header); OpenAI skips it unread.
        if !header.contains("#version") {
            return Err(TokenizerError::Vocab(format!(
                "unexpected header {header:?}"
            )));
        }
        let merges: Vec<(String, String)> = lines
            .take(NUM_MERGES)
            .map(|line| {
                let mut parts = line.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                        Ok((a.to_string(), b.to_string()))
                    }
                    _ => Err(TokenizerError::Vocab(format!("bad merge line {line:?}"))),
                }
            })
            .collect::<Result<_>>()?;
        if merges.len() != NUM_MERGES {
            return Err(TokenizerError::Vocab(format!(
                "expected {NUM_MERGES} merges, found {}",
                merges.len()
            )));
        }
        Self::from_merges(merges)
    }

    fn from_merges(merges: Vec<(String, String)>) -> Result<Self> {
        let byte_encoder = bytes_to_unicode();
        let byte_decoder = byte_encoder
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let order = byte_vocab_order(&byte_encoder);
        let mut decoder: Vec<String> = order.iter().map(|c| c.to_string()).collect();
        decoder.extend(order.iter().map(|c| format!("{c}</w>")));
        decoder.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        decoder.push("<|startoftext|>".into());
        decoder.push("<|endoftext|>".into());
        if decoder.len() != EOT as usize + 1 {
            return Err(TokenizerError::Vocab(format!(
                "vocabulary has {} entries, expected {}",
                decoder.len(),
                EOT + 1
            )));
        }
        let encoder = decoder
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, pair)| (pair, i as u32))
            .collect();
        let pattern = Regex::new(
            r"(?i)<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
        )
        .map_err(|e| TokenizerError::Vocab(e.to_string()))?;
        Ok(Self {
            encoder,
            decoder,
            ranks,
            byte_encoder,
            byte_decoder,
            pattern,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Vocabulary size (49,408).
    pub fn vocab_size(&self) -> usize {
        self.decoder.len()
    }

    /// Token ids of `text` without start/end tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let cleaned = clean_text(text);
        let mut ids = Vec::new();
        for m in self.pattern.find_iter(&cleaned) {
            let token = m.as_str();
            if token == "<|startoftext|>" || token == "<|endoftext|>" {
                ids.push(self.encoder[token]);
                continue;
            }
            let mapped: String = token
                .bytes()
                .map(|b| self.byte_encoder[b as usize])
                .collect();
            ids.extend(self.bpe(&mapped)?);
        }
        Ok(ids)
    }

    fn bpe(&self, token: &str) -> Result<Vec<u32>> {
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(token).cloned()) {
            return Ok(ids);
        }
        let chars: Vec<char> = token.chars().collect();
        let mut word: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| self.ranks.get(&(w[0].clone(), w[1].clone())))
                .min()
                .copied();
            let Some(rank) = best else { break };
            let (first, second) = word
                .windows(2)
                .find(|w| self.ranks.get(&(w[0].clone(), w[1].clone())) == Some(&rank))
                .map(|w| (w[0].clone(), w[1].clone()))
                .expect("pair of the best rank exists");
            // Merge every non-overlapping occurrence, left to right.
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == first && word[i + 1] == second {
                    merged.push(format!("{first}{second}"));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut word[i]));
                    i += 1;
                }
            }
            word = merged;
        }
        let ids = word
            .into_iter()
            .map(|piece| {
                self.encoder
                    .get(&piece)
                    .copied()
                    .ok_or(TokenizerError::UnknownToken(piece))
            })
            .collect::<Result<Vec<u32>>>()?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(token.to_string(), ids.clone());
        }
        Ok(ids)
    }

    /// `[SOT] + encode(text) + [EOT]`, zero-padded to `context_length` (OpenAI / open_clip
    /// padding). Too long input is an error unless `truncate`, which keeps `context_length`
    /// tokens and overwrites the last with EOT.
    pub fn tokenize(&self, text: &str, context_length: usize, truncate: bool) -> Result<Vec<u32>> {
        if context_length < 2 {
            return Err(TokenizerError::ContextLength(context_length));
        }
        let mut ids = Vec::with_capacity(context_length);
        ids.push(SOT);
        ids.extend(self.encode(text)?);
        ids.push(EOT);
        if ids.len() > context_length {
            if !truncate {
                return Err(TokenizerError::TooLong {
                    text: text.to_string(),
                    tokens: ids.len(),
                    context_length,
                });
            }
            ids.truncate(context_length);
            ids[context_length - 1] = EOT;
        }
        ids.resize(context_length, 0);
        Ok(ids)
    }

    /// [`ClipTokenizer::tokenize`] for several texts: one row of `context_length` ids each.
    pub fn tokenize_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        context_length: usize,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| self.tokenize(t.as_ref(), context_length, truncate))
            .collect()
    }

    /// Text of `ids` as OpenAI decodes it (`</w>` becomes a space; invalid UTF-8 is replaced).
    /// Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece = self
                .decoder
                .get(id as usize)
                .ok_or_else(|| TokenizerError::UnknownToken(format!("id {id}")))?;
            for c in piece.chars() {
                // Every vocabulary character is in the byte table.
                bytes.push(self.byte_decoder.get(&c).copied().unwrap_or(b'?'));
            }
        }
        Ok(String::from_utf8_lossy(&bytes).replace("</w>", " "))
    }

    /// Position of the first EOT, which is what the text tower pools (OpenAI takes
    /// `argmax(ids)`, and EOT is the largest id).
    pub fn eot_position(ids: &[u32]) -> Option<usize> {
        ids.iter().position(|&id| id == EOT)
    }

    /// Positions in `ids` where the token sequence of `placeholder` (e.g. `"X"`, used by prompt
    /// learning to reserve slots for learned context vectors) starts; non-overlapping.
    pub fn placeholder_positions(&self, ids: &[u32], placeholder: &str) -> Result<Vec<usize>> {
        let pattern = self.encode(placeholder)?;
        if pattern.is_empty() {
            return Err(TokenizerError::EmptyPlaceholder(placeholder.to_string()));
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i + pattern.len() <= ids.len() {
            if ids[i..i + pattern.len()] == pattern[..] {
                out.push(i);
                i += pattern.len();
            } else {
                i += 1;
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Text cleanup
// ---------------------------------------------------------------------------------------------

/// OpenAI's `whitespace_clean(basic_clean(text)).lower()`.
pub fn clean_text(text: &str) -> String {
    let fixed = ftfy_fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let stripped = py_strip(&unescaped);
    static WS: OnceLock<Regex> = OnceLock::new();
    let ws = WS.get_or_init(|| Regex::new(r"\s+").expect("valid regex"));
    let collapsed = ws.replace_all(stripped, " ");
    py_strip(&collapsed).to_lowercase()
}

/// Python's `str.isspace` (Unicode White_Space plus the separators U+001C..U+001F).
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

fn html5_entities() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        HTML5_ENTITIES
            .lines()
            .filter_map(|line| {
                let (name, hex) = line.split_once('\t')?;
                let value: Option<String> = hex
                    .split(' ')
                    .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
                    .collect();
                Some((name.to_string(), value?))
            })
            .collect()
    })
}

/// Windows-1252 characters for bytes 0x80..=0x9F; `None` where the code page leaves a byte
/// undefined (ftfy's "sloppy" codec and Python's `html` keep the C1 character then).
fn windows_1252_c1(b: u32) -> Option<char> {
    const TABLE: [u32; 32] = [
        0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039,
        0x0152, 0, 0x017D, 0, 0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC,
        0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
    ];
    let idx = b.checked_sub(0x80)? as usize;
    TABLE
        .get(idx)
        .copied()
        .filter(|&c| c != 0)
        .and_then(char::from_u32)
}

/// Python's `html._replace_charref` for a numeric reference with value `num` (`None` = too large).
fn numeric_charref(num: Option<u64>) -> String {
    let Some(num) = num else {
        return "\u{FFFD}".into();
    };
    match num {
        0x00 => return "\u{FFFD}".into(),
        0x0D => return "\r".into(),
        0x80..=0x9F => {
            return windows_1252_c1(num as u32)
                .unwrap_or_else(|| char::from_u32(num as u32).expect("C1 char"))
                .to_string()
        }
        _ => {}
    }
    if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
        return "\u{FFFD}".into();
    }
    let invalid = matches!(num, 0x1..=0x8 | 0xB | 0xE..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (num & 0xFFFE) == 0xFFFE;
    if invalid {
        return String::new();
    }
    char::from_u32(num as u32)
        .map(String::from)
        .unwrap_or_default()
}

fn parse_num(digits: &str, radix: u32) -> Option<u64> {
    // Values beyond u64 are certainly beyond U+10FFFF: report "too large".
    u64::from_str_radix(digits, radix).ok()
}

/// Python's `html.unescape`.
pub fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)").expect("regex")
    });
    let entities = html5_entities();
    re.replace_all(s, |caps: &regex::Captures| {
        let body = &caps[1];
        if let Some(num) = body.strip_prefix('#') {
            let num = num.trim_end_matches(';');
            let value = if let Some(hex) = num.strip_prefix(['x', 'X']) {
                parse_num(hex, 16)
            } else {
                parse_num(num, 10)
            };
            return numeric_charref(value);
        }
        if let Some(v) = entities.get(body) {
            return v.clone();
        }
        // Longest prefix (at least 2 characters) that is a known name.
        let boundaries: Vec<usize> = body.char_indices().map(|(i, _)| i).collect();
        for x in (2..boundaries.len()).rev() {
            let (head, tail) = body.split_at(boundaries[x]);
            if let Some(v) = entities.get(head) {
                return format!("{v}{tail}");
            }
        }
        format!("&{body}")
    })
    .into_owned()
}

/// ftfy's entity table: HTML5 names ending in `;`, plus upper-case spellings of all-lowercase
/// names when `html.unescape` leaves the upper-case form alone (e.g. `&EACUTE;` -> `É`).
fn ftfy_entities() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        for (name, value) in html5_entities() {
            if !name.ends_with(';') {
                continue;
            }
            map.insert(format!("&{name}"), value.clone());
            if *name == name.to_lowercase() {
                let upper = format!("&{}", name.to_uppercase());
                if html_unescape(&upper) == upper {
                    map.insert(upper, value.to_uppercase());
                }
            }
        }
        map
    })
}

/// ftfy's `unescape_html`: only complete `&name;` / `&#…;` references.
fn ftfy_unescape_html(text: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("regex"));
    re.replace_all(text, |caps: &regex::Captures| {
        let m = &caps[0];
        if let Some(v) = ftfy_entities().get(m) {
            return v.clone();
        }
        if m.starts_with("&#") {
            let decoded = html_unescape(m);
            if decoded.contains(';') {
                return m.to_string();
            }
            return decoded;
        }
        m.to_string()
    })
    .into_owned()
}

fn nfc(text: &str) -> String {
    ComposingNormalizerBorrowed::new_nfc()
        .normalize(text)
        .into_owned()
}

/// One round of ftfy's character-level fixes (everything after `fix_encoding`).
fn ftfy_fix_chars(text: &str) -> String {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    let ansi = ANSI.get_or_init(|| Regex::new(r"\x1b\[[\d;]*[a-zA-Z]").expect("regex"));
    let nfkc = ComposingNormalizerBorrowed::new_nfkc();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let cp = c as u32;
        // fix_c1_controls
        let c = if (0x80..=0x9F).contains(&cp) {
            windows_1252_c1(cp).unwrap_or(c)
        } else {
            c
        };
        // fix_latin_ligatures
        let lig = match c {
            'Ĳ' => Some("IJ"),
            'ĳ' => Some("ij"),
            'ŉ' => Some("ʼn"),
            'Ǳ' => Some("DZ"),
            'ǲ' => Some("Dz"),
            'ǳ' => Some("dz"),
            'Ǆ' => Some("DŽ"),
            'ǅ' => Some("Dž"),
            'ǆ' => Some("dž"),
            'Ǉ' => Some("LJ"),
            'ǈ' => Some("Lj"),
            'ǉ' => Some("lj"),
            'Ǌ' => Some("NJ"),
            'ǋ' => Some("Nj"),
            'ǌ' => Some("nj"),
            'ﬀ' => Some("ff"),
            'ﬁ' => Some("fi"),
            'ﬂ' => Some("fl"),
            'ﬃ' => Some("ffi"),
            'ﬄ' => Some("ffl"),
            'ﬅ' => Some("ſt"),
            'ﬆ' => Some("st"),
            _ => None,
        };
        if let Some(s) = lig {
            out.push_str(s);
            continue;
        }
        // fix_character_width: U+3000 and the NFKC forms of U+FF01..U+FFEF
        if c == '\u{3000}' {
            out.push(' ');
            continue;
        }
        if (0xFF01..0xFFF0).contains(&(c as u32)) {
            let mut buf = [0u8; 4];
            out.push_str(&nfkc.normalize(c.encode_utf8(&mut buf)));
            continue;
        }
        // uncurl_quotes
        match c {
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => out.push('\''),
            '\u{201C}'..='\u{201F}' => out.push('"'),
            _ => out.push(c),
        }
    }
    // fix_line_breaks
    let out = out
        .replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n");
    // remove_terminal_escapes
    let out = ansi.replace_all(&out, "");
    // remove_control_chars
    let out: String = out
        .chars()
        .filter(|&c| {
            !matches!(c as u32,
                0x00..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F | 0x206A..=0x206F | 0xFEFF | 0xFFF9..=0xFFFC)
        })
        .collect();
    nfc(&out)
}

/// ftfy 6 `fix_text` with default settings, minus the mojibake repair (see the module docs).
pub fn ftfy_fix_text(text: &str) -> String {
    let mut unescape = true;
    let mut out = String::with_capacity(text.len());
    for segment in text.split_inclusive('\n') {
        if unescape && segment.contains('<') {
            unescape = false;
        }
        let mut current = segment.to_string();
        loop {
            let before = current.clone();
            if unescape {
                current = ftfy_unescape_html(&current);
            }
            current = ftfy_fix_chars(&current);
            if current == before {
                break;
            }
        }
        out.push_str(&current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[b' ' as usize], '\u{120}');
    }

    #[test]
    fn html_unescape_like_python() {
        assert_eq!(html_unescape("&amp;amp;"), "&amp;");
        assert_eq!(html_unescape("&ampx &notit; &lt"), "&x ¬it; <");
        assert_eq!(
            html_unescape("&#65;&#x42;&#0;&#128;&#x110000;&#1;"),
            "AB\u{FFFD}€\u{FFFD}"
        );
        assert_eq!(html_unescape("&unknown; &"), "&unknown; &");
    }
}
