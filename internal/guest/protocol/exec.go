package protocol

// Exec sessions (TypeExec). The host opens a new stream with TypeExec; the
// guest answers TypeExecStarted (or TypeError with a Kind, which ends the
// stream), then TypeStdout/TypeStderr frames as the process writes (with
// Tty only TypeStdout: the pty merges them), and ends the stream with
// TypeExited. The host sends TypeStdin frames (FlagEnd: EOF), TypeResize
// and TypeSignal. When the host's connection ends, the guest kills the
// sessions of that connection (their output has nowhere to go).

// Exec starts a process in the guest, in the sandbox's root.
type Exec struct {
	// Argv is the command line; Argv[0] is resolved against Env's PATH in
	// the root when it has no '/'.
	Argv []string `json:"argv"`
	// Env is the environment, KEY=VALUE; empty means the main process's.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory; "" means the main process's.
	Dir string `json:"dir,omitempty"`
	// User is USER[:GROUP] or UID[:GID]; "" means the main process's.
	User string `json:"user,omitempty"`
	// Tty runs the process on a pseudo-terminal of Rows x Cols (24x80 when
	// 0) as its controlling terminal, stdin, stdout and stderr.
	Tty  bool   `json:"tty,omitempty"`
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
	// Stdin opens the process's standard input to TypeStdin frames;
	// otherwise it reads /dev/null.
	Stdin bool `json:"stdin,omitempty"`
	// TimeoutMillis kills the process (SIGKILL) after this long; 0: none.
	TimeoutMillis int64 `json:"timeoutMillis,omitempty"`
}

// ExecStarted reports a running exec process.
type ExecStarted struct {
	// PID is its process id in the guest.
	PID int `json:"pid"`
}

// Resize is a tty's new window size.
type Resize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ErrorKind classifies a failed request.
type ErrorKind string

// Error kinds.
const (
	// ErrNotFound: a program or path does not exist.
	ErrNotFound ErrorKind = "NotFound"
	// ErrPermissionDenied: the user may not do it.
	ErrPermissionDenied ErrorKind = "PermissionDenied"
	// ErrExists: the path exists and the request must not replace it.
	ErrExists ErrorKind = "Exists"
	// ErrNotDirectory / ErrIsDirectory: the path is of the wrong kind.
	ErrNotDirectory ErrorKind = "NotDirectory"
	ErrIsDirectory  ErrorKind = "IsDirectory"
	// ErrNotEmpty: a directory to remove without Recursive has entries.
	ErrNotEmpty ErrorKind = "NotEmpty"
	// ErrReadOnly: the filesystem is read-only.
	ErrReadOnly ErrorKind = "ReadOnly"
	// ErrInvalid: the request is malformed (a relative path, a bad user,
	// an unknown signal or operation).
	ErrInvalid ErrorKind = "Invalid"
	// ErrDraining: the sandbox is stopping and refuses new sessions.
	ErrDraining ErrorKind = "Draining"
	// ErrTimeout: the exec's TimeoutMillis passed (sent before its Exited).
	ErrTimeout ErrorKind = "Timeout"
	// ErrInternal: anything else.
	ErrInternal ErrorKind = "Internal"
)

// TypeDrain (host → guest, stream 0, JSON Drain): from now on refuse new
// exec sessions and file operations that write, with ErrDraining; running
// sessions go on until the shutdown.
const TypeDrain Type = 8

// Drain asks the guest to refuse new sessions.
type Drain struct{}
