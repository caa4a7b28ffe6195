package initd

import (
	"errors"
	"syscall"

	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// kindError is an error whose protocol.ErrorKind is known where it
// happens (a bad user is Invalid, whatever errno lies below it).
type kindError struct {
	Kind protocol.ErrorKind
	Msg  string
}

func (e *kindError) Error() string { return e.Msg }

// errorKind classifies err for the host: an explicit kindError first, then
// the errno it wraps (ENOENT NotFound, EACCES/EPERM PermissionDenied,
// ENOEXEC PermissionDenied as "not executable", …), else Internal.
func errorKind(err error) protocol.ErrorKind {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.Kind
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return protocol.ErrInternal
	}
	switch errno {
	case syscall.ENOENT:
		return protocol.ErrNotFound
	case syscall.EACCES, syscall.EPERM, syscall.ENOEXEC:
		return protocol.ErrPermissionDenied
	case syscall.EEXIST:
		return protocol.ErrExists
	case syscall.ENOTDIR:
		return protocol.ErrNotDirectory
	case syscall.EISDIR:
		return protocol.ErrIsDirectory
	case syscall.ENOTEMPTY:
		return protocol.ErrNotEmpty
	case syscall.EROFS:
		return protocol.ErrReadOnly
	case syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP:
		return protocol.ErrInvalid
	}
	return protocol.ErrInternal
}

// protoError is err as the protocol reports it.
func protoError(err error) *protocol.Error {
	return &protocol.Error{Message: err.Error(), Kind: errorKind(err)}
}
