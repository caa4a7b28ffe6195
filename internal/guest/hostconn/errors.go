package hostconn

import (
	"errors"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// ErrClosed is wrapped by every error of a session or request that failed
// because the connection ended (see Conn.Err for the cause).
var ErrClosed = errors.New("the guest connection is closed")

// ErrSessionClosed is returned by reads and writes of a Process after its
// Close.
var ErrSessionClosed = errors.New("the session is closed")

// ErrNoStdin is returned by Process.Stdin's Write for an exec started
// without protocol.Exec.Stdin: the guest's process reads /dev/null.
var ErrNoStdin = errors.New("the process was started without stdin")

// ErrStreamsExhausted is returned when a connection has used all of its
// 2³²-2 stream ids; the host must reconnect.
var ErrStreamsExhausted = errors.New("the connection has no stream id left")

// GuestError is a failure the guest reported (a protocol.Error, or the
// Error of a protocol.FileResult). Use errors.As to read its Kind, or
// IsKind.
type GuestError struct {
	// Kind classifies the failure ("" when none applies).
	Kind protocol.ErrorKind
	// Message is the guest's description.
	Message string
}

func (e *GuestError) Error() string {
	if e.Kind == "" {
		return "guest: " + e.Message
	}
	return "guest: " + string(e.Kind) + ": " + e.Message
}

// IsKind reports whether err is (or wraps) a *GuestError of the given kind.
func IsKind(err error, kind protocol.ErrorKind) bool {
	var ge *GuestError
	return errors.As(err, &ge) && ge.Kind == kind
}

func guestError(e protocol.Error) *GuestError {
	return &GuestError{Kind: e.Kind, Message: e.Message}
}
