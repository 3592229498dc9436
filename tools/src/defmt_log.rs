//! Decoding of the kernel's COM2 stream: defmt frames (rzcobs, defmt 1.2).
//!
//! The format strings live in the unstripped kernel ELF, so the table is
//! loaded from it once per run; the bytes from COM2 are then decoded
//! in-process with `defmt-decoder` and formatted as `[INFO ] message` lines.

use std::io::{ErrorKind, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};

use defmt_decoder::{DecodeError, Frame, Table};

/// How many malformed frames are reported one by one before the rest are
/// only counted, so a garbage stream cannot flood the log.
const MALFORMED_REPORT_LIMIT: usize = 10;

/// One item produced while decoding COM2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A decoded log frame, formatted by [`format_log_line`].
    Line(String),
    /// Something the reader of the log should know (malformed data, ...).
    Note(String),
}

/// Loads the defmt table from an ELF image. `Ok(None)` means the ELF has no
/// defmt table (the kernel was built without defmt, or without `-Tdefmt.x`).
pub fn load_table(elf: &[u8]) -> Result<Option<Table>, String> {
    // `{:#}` prints anyhow's context chain on one line.
    Table::parse(elf).map_err(|e| format!("{e:#}"))
}

/// Formats one log line: `[LEVEL] timestamp message`, where the level
/// (padded to 5 characters) and the timestamp are left out when absent.
pub fn format_log_line(level: Option<&str>, timestamp: Option<&str>, message: &str) -> String {
    let mut line = String::new();
    if let Some(level) = level {
        line.push_str(&format!("[{:<5}] ", level.to_ascii_uppercase()));
    }
    if let Some(ts) = timestamp {
        line.push_str(ts);
        line.push(' ');
    }
    line.push_str(message);
    line
}

/// Formats a decoded frame with [`format_log_line`].
pub fn format_frame(frame: &Frame<'_>) -> String {
    let level = frame.level().map(|l| l.as_str());
    let timestamp = frame.display_timestamp().map(|t| t.to_string());
    format_log_line(
        level,
        timestamp.as_deref(),
        &frame.display_message().to_string(),
    )
}

/// What one decode step yielded (owned, so it can leave `catch_unwind`).
enum Step {
    Line(String),
    NeedMore,
    Malformed,
}

/// Reads COM2 bytes from `reader` until end of stream, decoding frames as
/// they complete and handing each result to `emit` immediately (so the log
/// stays live).
///
/// Malformed frames are reported and skipped: rzcobs resynchronises at the
/// next frame separator. The raw encoding cannot resynchronise, so after a
/// malformed frame (or a panic inside the decoder) the rest of the stream
/// is read and discarded; it is still read so QEMU never blocks on COM2.
pub fn decode_stream<R: Read>(table: &Table, mut reader: R, mut emit: impl FnMut(Decoded)) {
    let mut decoder = table.new_stream_decoder();
    let can_recover = table.encoding().can_recover();
    let mut buf = [0u8; 4096];
    let mut discarding = false;
    let mut malformed = 0usize;

    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                emit(Decoded::Note(format!("reading COM2 failed: {e}")));
                break;
            }
        };
        if discarding {
            continue;
        }
        decoder.received(&buf[..n]);
        loop {
            // defmt-decoder formats with unwraps inside; a panic there must
            // not take the run down, only this stream.
            let step = catch_unwind(AssertUnwindSafe(|| match decoder.decode() {
                Ok(frame) => Step::Line(format_frame(&frame)),
                Err(DecodeError::UnexpectedEof) => Step::NeedMore,
                Err(DecodeError::Malformed) => Step::Malformed,
            }));
            match step {
                Ok(Step::Line(line)) => emit(Decoded::Line(line)),
                Ok(Step::NeedMore) => break,
                Ok(Step::Malformed) if can_recover => {
                    malformed += 1;
                    if malformed <= MALFORMED_REPORT_LIMIT {
                        emit(Decoded::Note(
                            "malformed defmt frame skipped (does the ELF match the running kernel?)"
                                .to_string(),
                        ));
                    }
                }
                Ok(Step::Malformed) => {
                    emit(Decoded::Note(
                        "malformed defmt data in raw encoding, which cannot resynchronise; \
                         ignoring the rest of COM2"
                            .to_string(),
                    ));
                    discarding = true;
                    break;
                }
                Err(_) => {
                    emit(Decoded::Note(
                        "the defmt decoder panicked; ignoring the rest of COM2".to_string(),
                    ));
                    discarding = true;
                    break;
                }
            }
        }
    }
    if malformed > MALFORMED_REPORT_LIMIT {
        emit(Decoded::Note(format!(
            "{malformed} malformed defmt frames in total (only the first {MALFORMED_REPORT_LIMIT} reported)"
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table like the one `Table::parse` builds from a kernel ELF: index 1
    /// is `info!("hello")`, 2 is `warn!("x = {=u8}")`, 3 is `println!`.
    fn test_table() -> Table {
        let json = r#"{
            "timestamp": null,
            "entries": {
                "1": {"string": {"tag": "Info", "string": "hello"}, "raw_symbol": "s1"},
                "2": {"string": {"tag": "Warn", "string": "x = {=u8}"}, "raw_symbol": "s2"},
                "3": {"string": {"tag": "Println", "string": "plain"}, "raw_symbol": "s3"}
            },
            "bitflags": {},
            "encoding": "Rzcobs"
        }"#;
        match serde_json::from_str(json) {
            Ok(table) => table,
            Err(e) => panic!("test table does not deserialize: {e}"),
        }
    }

    // rzcobs frames, worked out by hand from the decoder: the payload is the
    // u16 LE index plus arguments, zero-padded to 7 bytes (the decoder
    // ignores trailing bytes), and each frame ends with a 0x00 separator.
    const HELLO: &[u8] = &[0x01, 0x7e, 0x00];
    const X_IS_42: &[u8] = &[0x02, 0x2a, 0x7a, 0x00];
    const PLAIN: &[u8] = &[0x03, 0x7e, 0x00];
    const UNKNOWN_INDEX: &[u8] = &[0x09, 0x7e, 0x00];

    fn decode_all(table: &Table, bytes: &[u8], chunk: usize) -> Vec<Decoded> {
        // Feed the bytes in small reads to exercise partial frames.
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut out = Vec::new();
        decode_stream(table, Chunked(bytes, chunk), |d| out.push(d));
        out
    }

    #[test]
    fn formats_levels_padded_and_optional() {
        assert_eq!(format_log_line(Some("info"), None, "hi"), "[INFO ] hi");
        assert_eq!(format_log_line(Some("error"), None, "bad"), "[ERROR] bad");
        assert_eq!(format_log_line(None, None, "plain"), "plain");
        assert_eq!(
            format_log_line(Some("warn"), Some("0.001"), "w"),
            "[WARN ] 0.001 w"
        );
    }

    #[test]
    fn decodes_frames_across_partial_reads() {
        let table = test_table();
        let stream = [HELLO, X_IS_42, PLAIN].concat();
        for chunk in [1, 2, 3, 4096] {
            assert_eq!(
                decode_all(&table, &stream, chunk),
                vec![
                    Decoded::Line("[INFO ] hello".to_string()),
                    Decoded::Line("[WARN ] x = 42".to_string()),
                    Decoded::Line("plain".to_string()),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn malformed_frame_is_reported_and_decoding_resyncs() {
        let table = test_table();
        let stream = [HELLO, UNKNOWN_INDEX, &[0x55, 0x00], X_IS_42].concat();
        let out = decode_all(&table, &stream, 4096);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0], Decoded::Line("[INFO ] hello".to_string()));
        assert!(matches!(out[1], Decoded::Note(_)));
        assert!(matches!(out[2], Decoded::Note(_)));
        assert_eq!(out[3], Decoded::Line("[WARN ] x = 42".to_string()));
    }

    #[test]
    fn a_flood_of_garbage_is_summarised() {
        let table = test_table();
        let stream = UNKNOWN_INDEX.repeat(25);
        let out = decode_all(&table, &stream, 4096);
        assert_eq!(out.len(), MALFORMED_REPORT_LIMIT + 1);
        assert_eq!(
            out.last(),
            Some(&Decoded::Note(
                "25 malformed defmt frames in total (only the first 10 reported)".to_string()
            ))
        );
    }

    #[test]
    fn incomplete_trailing_frame_yields_nothing() {
        let table = test_table();
        assert_eq!(decode_all(&table, &[0x01, 0x7e], 4096), vec![]);
    }

    #[test]
    fn elf_without_defmt_table_or_garbage_is_not_a_panic() {
        // Not an ELF at all: a clear error, never a panic.
        assert!(load_table(b"definitely not an ELF").is_err());
    }
}
