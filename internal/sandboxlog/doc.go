// Package sandboxlog keeps a sandbox's output on its node: the main
// process's stdout and stderr, every exec session's output, and system
// markers, so that `kubectl sandbox logs` (tail, since, follow) can read it
// while the VM runs, after it stopped, and across node-agent restarts.
//
// # Files
//
// A sandbox's log lives in one directory: output.log is the file being
// written, output.log.1 … output.log.N-1 are older ones (the higher the
// index, the older). Each line is one JSON record, the format of
// microsandbox's exec.log:
//
//	{"t":"2026-11-28T19:31:08.123456789Z","s":"stdout","d":"hello\n"}
//	{"t":"…","s":"stderr","d":"/w==","e":"base64","id":3}
//
// t is the time the agent received the chunk (RFC 3339, UTC), s the source,
// d the bytes: UTF-8 text, or base64 when "e":"base64" (the chunk was not
// valid UTF-8), and id the exec session (absent for the main process).
// Records are chunks as they came from the guest, not lines: a line may
// span records and a record may hold many lines.
//
// When the next record would grow output.log past Options.MaxFileBytes, the
// Writer renames output.log.i to output.log.i+1 (dropping the oldest beyond
// Options.MaxFiles) and output.log to output.log.1, and starts a new
// output.log. The defaults (10 MiB × 4 files) cap a sandbox at 40 MiB, like
// microsandbox.
//
// # Durability
//
// A record is one write(2) of a whole line to a file opened with O_APPEND;
// there is no fsync per record (Close syncs). A crash of the agent loses
// nothing that Write returned for; a crash of the node may lose the last
// records or leave a torn or zero-filled last line, but never damages the
// lines before it: readers skip any line that is not a valid record, and a
// Writer reopened on a file whose last line is torn first ends that line, so
// the records it appends stay readable.
//
// # Reading
//
// Read emits the records in the order they were written, across the
// rotated files, filtered by source and time, optionally only those holding
// the last N lines (ReadOptions.Tail), and with ReadOptions.Follow keeps
// emitting records as they are appended until its context ends. It polls
// (every 100 ms by default) rather than using inotify: it is simpler, it
// needs no goroutine or file descriptor per follower beyond the file being
// read, and a tenth of a second is well within what a human reading logs
// notices. It follows files by identity (device and inode) and offset, not
// by name, and lists the directory under a shared flock(2) that the Writer
// takes exclusively to rotate, so a rotation while reading neither loses
// nor repeats records; only a reader that falls more than the whole cap
// behind loses what the Writer dropped. Every Record carries a Cursor, with
// which a follower that reconnects resumes right after the last record it
// saw.
//
// One Writer per directory: two Writers on the same directory would both
// rotate it.
package sandboxlog
