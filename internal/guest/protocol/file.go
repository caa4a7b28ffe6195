package protocol

// File operations (TypeFile). The host opens a new stream with a
// FileRequest. For FileRead and FileTar the guest streams TypeData frames
// (FlagEnd on the last, which may be empty) and then TypeFileResult; for
// FileWrite and FileUntar the host streams TypeData frames (FlagEnd on the
// last) and the guest answers TypeFileResult once everything is written;
// every other operation is answered with TypeFileResult alone. A failure is
// a FileResult with Error set, at any point (the host then stops sending).
//
// Paths are absolute paths inside the sandbox's root (what its processes
// see, mounts included); symbolic links resolve inside the root. Each
// operation runs as User (default: the main process's user), so the
// guest's own permissions apply.

// FileOp names a file operation.
type FileOp string

// File operations.
const (
	// FileRead streams Path's bytes, from Offset, at most Length (0: all).
	FileRead FileOp = "read"
	// FileWrite writes the streamed bytes to Path (created with Mode,
	// default 0644; truncated unless Append; not replaced when
	// CreateOnly).
	FileWrite FileOp = "write"
	// FileList lists the directory Path (Result.Entries, sorted by name).
	FileList FileOp = "list"
	// FileStat describes Path (Result.Stat), not following a final
	// symlink.
	FileStat FileOp = "stat"
	// FileMkdir makes the directory Path (Mode, default 0755); with
	// Recursive, its parents too and no error when it exists.
	FileMkdir FileOp = "mkdir"
	// FileRemove removes Path; a non-empty directory needs Recursive.
	FileRemove FileOp = "remove"
	// FileCopy copies Path to Dest (a directory tree needs Recursive).
	FileCopy FileOp = "copy"
	// FileRename renames Path to Dest.
	FileRename FileOp = "rename"
	// FileExists answers Result.Exists for Path.
	FileExists FileOp = "exists"
	// FileTar streams a tar archive of Path (a file or a directory tree),
	// entries named relative to Path's parent, like `tar -C dir(Path) -c
	// base(Path)`.
	FileTar FileOp = "tar"
	// FileUntar extracts the streamed tar archive into the directory Path
	// (created if needed); entries must stay inside it.
	FileUntar FileOp = "untar"
)

// FileRequest is one file operation.
type FileRequest struct {
	Op   FileOp `json:"op"`
	Path string `json:"path"`
	// Dest is the target of copy and rename.
	Dest string `json:"dest,omitempty"`
	// Mode is the permission bits of what write and mkdir create.
	Mode uint32 `json:"mode,omitempty"`
	// Recursive: mkdir -p, rm -r, cp -r.
	Recursive bool `json:"recursive,omitempty"`
	// Append appends to the file instead of truncating it (write).
	Append bool `json:"append,omitempty"`
	// CreateOnly fails a write to an existing path with ErrExists.
	CreateOnly bool `json:"createOnly,omitempty"`
	// Offset and Length bound a read.
	Offset int64 `json:"offset,omitempty"`
	Length int64 `json:"length,omitempty"`
	// User runs the operation as USER[:GROUP] or UID[:GID].
	User string `json:"user,omitempty"`
}

// FileKind is the type of a file.
type FileKind string

// File kinds.
const (
	KindFile    FileKind = "file"
	KindDir     FileKind = "dir"
	KindSymlink FileKind = "symlink"
	KindOther   FileKind = "other"
)

// FileInfo describes a file.
type FileInfo struct {
	// Name is the base name (the full path for stat).
	Name string   `json:"name"`
	Kind FileKind `json:"kind"`
	Size int64    `json:"size"`
	// Mode is the permission bits with setuid, setgid and sticky.
	Mode uint32 `json:"mode"`
	// ModTimeNanos is the modification time, Unix nanoseconds.
	ModTimeNanos int64  `json:"modTimeNanos"`
	UID          uint32 `json:"uid"`
	GID          uint32 `json:"gid"`
	// Link is a symlink's target.
	Link string `json:"link,omitempty"`
}

// FileResult ends a file stream.
type FileResult struct {
	// Error is set when the operation failed.
	Error *Error `json:"error,omitempty"`
	// Stat answers stat.
	Stat *FileInfo `json:"stat,omitempty"`
	// Entries answers list.
	Entries []FileInfo `json:"entries,omitempty"`
	// Exists answers exists.
	Exists bool `json:"exists,omitempty"`
	// Bytes counts the data bytes read or written.
	Bytes int64 `json:"bytes,omitempty"`
}

// Metrics is the guest's view of its resources, sent with every
// Heartbeat.
type Metrics struct {
	// CPUNanos is the CPU time all guest CPUs spent busy since boot.
	CPUNanos int64 `json:"cpuNanos"`
	// MemoryTotalBytes and MemoryAvailableBytes are /proc/meminfo's
	// MemTotal and MemAvailable.
	MemoryTotalBytes     int64 `json:"memoryTotalBytes"`
	MemoryAvailableBytes int64 `json:"memoryAvailableBytes"`
	// DiskReadBytes and DiskWriteBytes sum the guest's block devices.
	DiskReadBytes  int64 `json:"diskReadBytes"`
	DiskWriteBytes int64 `json:"diskWriteBytes"`
	// NetRxBytes and NetTxBytes sum the guest's network interfaces but lo.
	NetRxBytes int64 `json:"netRxBytes"`
	NetTxBytes int64 `json:"netTxBytes"`
	// UpperUsedBytes and UpperFreeBytes are the writable layer's usage.
	UpperUsedBytes int64 `json:"upperUsedBytes"`
	UpperFreeBytes int64 `json:"upperFreeBytes"`
	// UptimeNanos is CLOCK_BOOTTIME.
	UptimeNanos int64 `json:"uptimeNanos"`
}
