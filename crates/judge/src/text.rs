//! Text features the rule judge checks. Each is a cheap scan over the response, written so
//! that a rubric author can predict the result by reading the doc comment.

/// Number of whitespace-separated words.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Case-insensitive containment. `haystack_lower` must already be lowercased (the judge does it
/// once per response, not once per check).
pub fn contains_ci(haystack_lower: &str, needle: &str) -> bool {
    haystack_lower.contains(&*lowered(needle))
}

/// Case-insensitive prefix test after trimming leading whitespace of the response.
pub fn starts_with_ci(text_lower: &str, prefix: &str) -> bool {
    text_lower.trim_start().starts_with(&*lowered(prefix))
}

/// Case-insensitive suffix test after trimming trailing whitespace of the response (and of the
/// expected text: a rubric's `"Thank you. "` and `"Thank you."` mean the same).
pub fn ends_with_ci(text_lower: &str, suffix: &str) -> bool {
    text_lower
        .trim_end()
        .ends_with(&*lowered(suffix.trim_end()))
}

/// The rubric's text lowercased, borrowed when it has no uppercase letter (the common case,
/// so most checks allocate nothing).
fn lowered(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_uppercase) {
        text.to_lowercase().into()
    } else {
        text.into()
    }
}

/// Marker style of one line, if it is a list item: `- `, `* `, `+ `, `• ` make a bullet;
/// digits followed by `.` or `)` and a space (`1. `, `12) `) make a numbered item.
/// Leading indentation is allowed.
fn list_item_style(line: &str) -> Option<rubric::ListStyle> {
    let l = line.trim_start();
    let mut chars = l.chars();
    match chars.next()? {
        '-' | '*' | '+' | '•' => {
            matches!(chars.next(), Some(' ' | '\t')).then_some(rubric::ListStyle::Bullet)
        }
        c if c.is_ascii_digit() => {
            let rest = l.trim_start_matches(|c: char| c.is_ascii_digit());
            let mut r = rest.chars();
            (matches!(r.next(), Some('.' | ')')) && matches!(r.next(), Some(' ' | '\t')))
                .then_some(rubric::ListStyle::Numbered)
        }
        _ => None,
    }
}

/// Whether the text holds a list of the given style: at least two item lines of that style
/// (one dash at the start of a line is punctuation, not a list). `Any` accepts either style,
/// counted separately.
pub fn has_list(text: &str, style: rubric::ListStyle) -> bool {
    use rubric::ListStyle;
    let (mut bullets, mut numbered) = (0usize, 0usize);
    for line in text.lines() {
        match list_item_style(line) {
            Some(ListStyle::Bullet) => bullets += 1,
            Some(ListStyle::Numbered) => numbered += 1,
            _ => {}
        }
    }
    match style {
        ListStyle::Bullet => bullets >= 2,
        ListStyle::Numbered => numbered >= 2,
        ListStyle::Any => bullets >= 2 || numbered >= 2,
    }
}

/// Whether the text asks a question: a `?` that ends a sentence, i.e. is followed by the end of
/// the text, whitespace, or closing quotes/brackets. A `?` inside a URL query does not count.
pub fn asks_question(text: &str) -> bool {
    text.char_indices().any(|(i, c)| {
        c == '?'
            && text[i + 1..].chars().next().is_none_or(|n| {
                n.is_whitespace()
                    || matches!(
                        n,
                        '"' | '\'' | ')' | ']' | '*' | '_' | '\u{201d}' | '\u{2019}'
                    )
            })
    })
}

/// Spelled-out numbers that count as "mentions a number" besides digits.
const NUMBER_WORDS: &[&str] = &[
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
    "hundred",
    "thousand",
    "million",
    "billion",
    "dozen",
    "half",
];

/// Whether the text mentions a number: any ASCII digit, or a spelled-out number word
/// (`NUMBER_WORDS`, whole words only, so "someone" does not count as "one").
/// `text_lower` must be lowercased.
pub fn mentions_number(text_lower: &str) -> bool {
    if text_lower.bytes().any(|b| b.is_ascii_digit()) {
        return true;
    }
    text_lower
        .split(|c: char| !c.is_alphabetic())
        .any(|w| !w.is_empty() && NUMBER_WORDS.contains(&w))
}

/// Splits a response into sentences for the embedding judge: at line breaks and after `.`,
/// `!` or `?` followed by whitespace. List markers are stripped, and fragments without a
/// letter or digit (rules, stray punctuation) are dropped.
#[cfg(feature = "embedding")]
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = strip_list_marker(line.trim());
        let mut start = 0;
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            let ends = matches!(c, '.' | '!' | '?')
                && chars.peek().is_some_and(|(_, n)| n.is_whitespace());
            if ends {
                push_sentence(&mut out, &line[start..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
        }
        push_sentence(&mut out, &line[start..]);
    }
    out
}

#[cfg(feature = "embedding")]
fn push_sentence<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    let s = s.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s);
    }
}

#[cfg(feature = "embedding")]
fn strip_list_marker(line: &str) -> &str {
    match list_item_style(line) {
        Some(rubric::ListStyle::Bullet) => {
            let mut rest = line.trim_start().chars();
            rest.next();
            rest.as_str().trim_start()
        }
        Some(_) => line
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())[1..]
            .trim_start(),
        None => line.trim_start_matches('#').trim_start(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rubric::ListStyle;

    #[cfg(feature = "embedding")]
    #[test]
    fn sentences_split_at_ends_and_lines_without_markers() {
        let text = "## Advice\nRest well. Drink water!\n• See a doctor if it lasts 3.5 days?\n1. Ice it\n---\n";
        assert_eq!(
            sentences(text),
            vec![
                "Advice",
                "Rest well.",
                "Drink water!",
                "See a doctor if it lasts 3.5 days?",
                "Ice it"
            ]
        );
        assert!(sentences("  \n ").is_empty());
    }

    #[test]
    fn words_are_whitespace_separated() {
        assert_eq!(word_count("  one two\tthree\nfour  "), 4);
        assert_eq!(word_count(""), 0);
    }

    #[test]
    fn lists_need_two_items_of_the_style() {
        assert!(has_list("Intro:\n- a\n- b\n", ListStyle::Bullet));
        assert!(!has_list("Intro:\n- a\n", ListStyle::Bullet));
        assert!(has_list("1. a\n  2) b", ListStyle::Numbered));
        assert!(!has_list("1. a\n  2) b", ListStyle::Bullet));
        assert!(has_list("* a\n• b", ListStyle::Any));
        assert!(!has_list("-5 degrees\n-3 degrees", ListStyle::Any));
        assert!(!has_list("2024.\n1999.", ListStyle::Numbered));
    }

    #[test]
    fn questions_end_sentences() {
        assert!(asks_question("How old are you?"));
        assert!(asks_question("Are you sure? Tell me."));
        assert!(asks_question("He asked \"why?\""));
        assert!(!asks_question("See https://x.org/a?b=c for details."));
        assert!(!asks_question("No question here."));
    }

    #[test]
    fn numbers_are_digits_or_whole_number_words() {
        assert!(mentions_number("take 2 tablets"));
        assert!(mentions_number("take two tablets"));
        assert!(!mentions_number("someone is alone"));
        assert!(!mentions_number("no numbers"));
    }

    #[test]
    fn affixes_ignore_case_and_outer_whitespace() {
        assert!(starts_with_ci("  hello there", "Hello"));
        assert!(ends_with_ci("bye now.\n", "Now. "));
        assert!(!ends_with_ci("bye now", "now."));
        assert!(contains_ci("call 911 now", "911"));
        assert!(contains_ci("call your doctor", "Doctor"));
    }
}
