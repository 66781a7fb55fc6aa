//! Turning documents into indexable chunks: HTML stripped to text, Markdown split at headings, and
//! sections cut into overlapping windows of words that keep their heading.
//!
//! Window and overlap are measured by a [`TokenCounter`]: [`WordCount`] by default; the facade crate
//! `soramai` implements it over the serving model's tokenizer (`soramai::grounded::ModelTokens`).

/// The format of a document's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Plain text.
    Text,
    /// Markdown: `#` headings start sections.
    Markdown,
    /// HTML: tags are stripped, `<script>`/`<style>` dropped, `<h1>`..`<h6>` start sections.
    Html,
}

/// A piece of a document ready to index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The heading of the section the chunk belongs to (empty before the first heading).
    pub heading: String,
    /// The chunk text.
    pub text: String,
    /// Position of the chunk within its document.
    pub ordinal: usize,
}

/// Measures text in the units chunk windows are counted in (tokens of the serving model).
pub trait TokenCounter: Send + Sync + std::fmt::Debug {
    /// How many tokens `text` (one word, with its leading space) takes.
    fn count(&self, text: &str) -> usize;
}

/// Counts words: one token per whitespace-separated word.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordCount;

impl TokenCounter for WordCount {
    fn count(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

/// How documents are cut.
#[derive(Debug, Clone, Copy)]
pub struct ChunkingOptions {
    /// Tokens per chunk (a single word longer than this becomes a chunk of its own).
    pub window: usize,
    /// Tokens shared with the previous chunk.
    pub overlap: usize,
}

impl Default for ChunkingOptions {
    fn default() -> Self {
        Self { window: 160, overlap: 32 }
    }
}

fn decode_entity(entity: &str) -> Option<char> {
    Some(match entity {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" | "#39" => '\'',
        "nbsp" => ' ',
        e if e.starts_with("#x") || e.starts_with("#X") => char::from_u32(u32::from_str_radix(&e[2..], 16).ok()?)?,
        e if e.starts_with('#') => char::from_u32(e[1..].parse().ok()?)?,
        _ => return None,
    })
}

/// Strips HTML to Markdown-like text: headings become `#` lines, block elements line breaks,
/// scripts, styles and comments vanish, entities are decoded. Never fails: malformed markup is
/// treated as text as far as it can be.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        push_text(&mut out, &rest[..lt]);
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |e| &after[e + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            push_text(&mut out, rest);
            rest = "";
            break;
        };
        let tag = rest[1..gt].trim();
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if !closing && (name == "script" || name == "style") {
            let end = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            rest = match lower.find(&end) {
                Some(i) => rest[i..].find('>').map_or("", |g| &rest[i + g + 1..]),
                None => "",
            };
            continue;
        }
        match name.as_str() {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if !closing => {
                let level = name[1..].parse::<usize>().unwrap_or(1);
                out.push('\n');
                out.push_str(&"#".repeat(level));
                out.push(' ');
            }
            "p" | "div" | "br" | "li" | "tr" | "section" | "article" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
            | "ul" | "ol" | "table" | "pre" | "blockquote" => out.push('\n'),
            _ => out.push(' '),
        }
    }
    push_text(&mut out, rest);
    out
}

fn push_text(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match after.find(';').filter(|&i| i <= 10).and_then(|i| decode_entity(&after[..i]).map(|c| (i, c))) {
            Some((i, c)) => {
                out.push(c);
                rest = &after[i + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// Splits Markdown-like text into (heading, body) sections.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in text.lines() {
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            out.push((trimmed[hashes..].trim().to_string(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out.retain(|(h, b)| !h.is_empty() || !b.trim().is_empty());
    out
}

/// Cuts a document into chunks, counting words.
pub fn chunk(body: &str, format: Format, options: ChunkingOptions) -> Vec<Chunk> {
    chunk_with(body, format, options, &WordCount)
}

/// Cuts a document into chunks whose token counts (by `counter`) fit `options.window`, each
/// sharing up to `options.overlap` tokens with the previous one.
pub fn chunk_with(body: &str, format: Format, options: ChunkingOptions, counter: &dyn TokenCounter) -> Vec<Chunk> {
    let window = options.window.max(1);
    let overlap = options.overlap.min(window - 1);
    let text = match format {
        Format::Html => html_to_text(body),
        Format::Markdown | Format::Text => body.to_string(),
    };
    let parts = if format == Format::Text { vec![(String::new(), text)] } else { sections(&text) };
    let mut out = Vec::new();
    for (heading, body) in parts {
        let words: Vec<&str> = body.split_whitespace().collect();
        if words.is_empty() {
            if !heading.is_empty() {
                out.push(Chunk { heading: heading.clone(), text: String::new(), ordinal: out.len() });
            }
            continue;
        }
        let cost: Vec<usize> = words.iter().map(|w| counter.count(&format!(" {w}")).max(1)).collect();
        let mut start = 0;
        loop {
            // Extend the window while it fits (always at least one word).
            let mut end = start + 1;
            let mut used = cost[start];
            while end < words.len() && used + cost[end] <= window {
                used += cost[end];
                end += 1;
            }
            out.push(Chunk { heading: heading.clone(), text: words[start..end].join(" "), ordinal: out.len() });
            if end == words.len() {
                break;
            }
            // The next window starts where at most `overlap` tokens of this one remain.
            let mut next = end;
            let mut shared = 0;
            while next > start + 1 && shared + cost[next - 1] <= overlap {
                shared += cost[next - 1];
                next -= 1;
            }
            start = next;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_stripped_with_headings_kept() {
        let html = "<html><head><style>p{color:red}</style><script>alert('x<y')</script></head>\
                    <body><h2>Rotation &amp; keys</h2><p>Keys rotate&nbsp;daily &lt;3 &#x41;&#66;</p><!-- hidden --></body></html>";
        let text = html_to_text(html);
        assert!(text.contains("## Rotation & keys"), "{text}");
        assert!(text.contains("Keys rotate daily <3 AB"), "{text}");
        assert!(!text.contains("alert") && !text.contains("color") && !text.contains("hidden"), "{text}");
        let chunks = chunk(html, Format::Html, ChunkingOptions::default());
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].heading, "Rotation & keys");
    }

    #[test]
    fn hostile_markup_does_not_panic() {
        for s in ["<", "<<<>>>", "&", "&#xFFFFFFFF;", "&#99999999999;", "<script>", "<!--", "<h9>x", "<é>", "&;&#;&#x;"]
        {
            let _ = html_to_text(s);
            let _ = chunk(s, Format::Html, ChunkingOptions { window: 1, overlap: 5 });
        }
    }

    #[derive(Debug)]
    struct CharsOverFour;
    impl TokenCounter for CharsOverFour {
        fn count(&self, text: &str) -> usize {
            text.trim().len().div_ceil(4)
        }
    }

    #[test]
    fn windows_follow_the_token_counter() {
        let body = "a bb ccccc dddddddddddd e ffffffff gggg hhhhhhhhhhhhhhhhhhhh i jj kkk";
        let opts = ChunkingOptions { window: 6, overlap: 2 };
        let chunks = chunk_with(body, Format::Text, opts, &CharsOverFour);
        let cost = |t: &str| t.split_whitespace().map(|w| w.len().div_ceil(4)).sum::<usize>();
        for c in &chunks {
            let n = cost(&c.text);
            assert!(n <= 6 || c.text.split_whitespace().count() == 1, "{c:?} costs {n}");
        }
        // Every word appears, in order, and consecutive chunks overlap by at most 2 tokens.
        let all: Vec<&str> = body.split_whitespace().collect();
        assert_eq!(chunks.first().and_then(|c| c.text.split_whitespace().next()), Some("a"));
        assert_eq!(chunks.last().and_then(|c| c.text.split_whitespace().last()), Some("kkk"));
        for w in &all {
            assert!(chunks.iter().any(|c| c.text.split_whitespace().any(|x| x == *w)), "{w} lost");
        }
        for pair in chunks.windows(2) {
            let a: Vec<&str> = pair[0].text.split_whitespace().collect();
            let b: Vec<&str> = pair[1].text.split_whitespace().collect();
            let shared = (1..=a.len().min(b.len())).rev().find(|&k| a[a.len() - k..] == b[..k]).unwrap_or(0);
            assert!(cost(&a[a.len() - shared..].join(" ")) <= 2, "{pair:?}");
        }
    }

    #[test]
    fn windows_overlap_and_keep_headings() {
        let body: String = (0..25).map(|i| format!("w{i} ")).collect();
        let md = format!("intro words\n# First\n{body}\n## Second\nshort\n");
        let c = chunk(&md, Format::Markdown, ChunkingOptions { window: 10, overlap: 3 });
        assert_eq!(c[0].heading, "");
        assert_eq!(c[1].heading, "First");
        assert!(c[1].text.starts_with("w0 ") && c[2].text.starts_with("w7 "), "{c:?}");
        assert_eq!(c.last().map(|x| (x.heading.as_str(), x.text.as_str())), Some(("Second", "short")));
        assert!(c.iter().enumerate().all(|(i, x)| x.ordinal == i));
    }
}
