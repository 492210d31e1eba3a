//! Turning raw agent output into log lines: complete lines only, lines over
//! [`MAX_LINE`] split, invalid UTF-8 replaced, an optional time prefix.

/// The longest line written; longer ones are split into pieces of this size.
pub const MAX_LINE: usize = 64 * 1024;

/// Appends every complete line of `input` to `out`, normalized and ending in
/// `\n`. At `eof` a trailing partial line counts as complete. Returns how
/// many bytes of `input` were consumed and how many lines were written; the
/// unconsumed rest is an incomplete line to keep for the next call.
pub fn normalize(input: &[u8], eof: bool, prefix: Option<&str>, out: &mut Vec<u8>) -> (usize, u64) {
    let mut pos = 0;
    let mut lines = 0;
    let all_utf8 = std::str::from_utf8(input).is_ok();
    while pos < input.len() {
        let window = &input[pos..input.len().min(pos + MAX_LINE + 1)];
        let (line, next) = match memchr::memchr(b'\n', window) {
            Some(i) if i <= MAX_LINE => (&input[pos..pos + i], pos + i + 1),
            _ if input.len() - pos > MAX_LINE => {
                let cut = char_boundary(input, pos + MAX_LINE, pos);
                (&input[pos..cut], cut)
            }
            _ if eof => (&input[pos..], input.len()),
            _ => break,
        };
        if let Some(p) = prefix {
            out.extend_from_slice(p.as_bytes());
        }
        if all_utf8 {
            out.extend_from_slice(line);
        } else {
            out.extend_from_slice(String::from_utf8_lossy(line).as_bytes());
        }
        out.push(b'\n');
        lines += 1;
        pos = next;
    }
    (pos, lines)
}

/// Moves `cut` back (by at most 3 bytes, never before `min`) so that it does
/// not fall inside a UTF-8 sequence.
fn char_boundary(input: &[u8], mut cut: usize, min: usize) -> usize {
    let floor = cut.saturating_sub(3).max(min + 1);
    while cut > floor && (input[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    cut
}

/// The lines of `data` (whole lines starting at log offset `start`), each
/// with the offset just past it: the cursor to resume after that line.
pub fn split(start: u64, data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= data.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &data[pos..]).map_or(data.len(), |i| pos + i + 1);
        let line = &data[pos..end];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        pos = end;
        Some((start + end as u64, line))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(input: &[u8], eof: bool) -> (usize, u64, Vec<u8>) {
        let mut out = Vec::new();
        let (used, n) = normalize(input, eof, None, &mut out);
        (used, n, out)
    }

    #[test]
    fn keeps_partial_line_until_eof() {
        assert_eq!(norm(b"a\nbc", false), (2, 1, b"a\n".to_vec()));
        assert_eq!(norm(b"a\nbc", true), (4, 2, b"a\nbc\n".to_vec()));
        assert_eq!(norm(b"", true), (0, 0, vec![]));
    }

    #[test]
    fn keeps_lines_exactly() {
        let input = b"  spaced \r\n\n\ttab\n";
        assert_eq!(norm(input, false), (input.len(), 3, input.to_vec()));
    }

    #[test]
    fn replaces_invalid_utf8() {
        let (used, n, out) = norm(b"ok\n\xff\xfebad\n", false);
        assert_eq!((used, n), (9, 2));
        assert_eq!(String::from_utf8(out).unwrap(), "ok\n\u{fffd}\u{fffd}bad\n");
    }

    #[test]
    fn splits_long_lines() {
        let mut input = vec![b'x'; MAX_LINE * 2 + 10];
        input.push(b'\n');
        let (used, n, out) = norm(&input, false);
        assert_eq!(used, input.len());
        assert_eq!(n, 3);
        let lines: Vec<_> = out.split(|b| *b == b'\n').collect();
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1].len(), MAX_LINE);
        assert_eq!(lines[2].len(), 10);
    }

    #[test]
    fn a_line_of_exactly_max_is_one_line() {
        let mut input = vec![b'y'; MAX_LINE];
        input.push(b'\n');
        let (used, n, out) = norm(&input, false);
        assert_eq!((used, n), (input.len(), 1));
        assert_eq!(out, input);
    }

    #[test]
    fn long_partial_line_is_split_before_eof() {
        let input = vec![b'z'; MAX_LINE + 5];
        let (used, n, _) = norm(&input, false);
        assert_eq!((used, n), (MAX_LINE, 1));
    }

    #[test]
    fn split_does_not_cut_a_character() {
        let mut input = vec![b'a'; MAX_LINE - 1];
        input.extend_from_slice("é".as_bytes()); // straddles MAX_LINE
        input.extend_from_slice(b"tail\n");
        let (used, n, out) = norm(&input, false);
        assert_eq!((used, n), (input.len(), 2));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\u{fffd}'));
        assert!(text.ends_with("étail\n"));
    }

    #[test]
    fn prefix_on_every_line() {
        let mut out = Vec::new();
        normalize(b"a\nb\n", false, Some("T "), &mut out);
        assert_eq!(out, b"T a\nT b\n");
    }

    #[test]
    fn split_gives_resume_cursors() {
        let got: Vec<_> = split(100, b"ab\n\ncd\n").collect();
        assert_eq!(got, vec![(103, &b"ab"[..]), (104, &b""[..]), (107, &b"cd"[..])]);
    }
}
