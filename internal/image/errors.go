package image

import (
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Sentinel errors the node agent branches on. Errors returned by Cache wrap
// one of them together with the underlying error, whose text (the registry's
// own message where there is one) belongs in the ImageReady condition.
var (
	// ErrInvalidReference means the image reference, the pinned digest or the
	// pull options cannot be parsed; retrying cannot help.
	ErrInvalidReference = errors.New("invalid image reference")

	// ErrNotFound means the registry has no such repository, tag or
	// manifest, or the image has no manifest for the node's platform.
	ErrNotFound = errors.New("image not found")

	// ErrUnauthorized means the registry refused the credentials (or their
	// absence) with 401 or 403.
	ErrUnauthorized = errors.New("unauthorized")

	// ErrNotCached means the pull policy is Never and the node does not hold
	// the image.
	ErrNotCached = errors.New("image not present on the node and pull policy is Never")

	// ErrInvalidImage means the image was fetched but cannot be turned into a
	// root filesystem: a layer that is not a tar stream or does not match its
	// digest, or an entry that would escape the root filesystem.
	ErrInvalidImage = errors.New("invalid image")
)

// classify wraps a go-containerregistry error with the sentinel matching the
// registry's answer, keeping the registry's message.
func classify(err error) error {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return err
	}
	switch {
	case terr.StatusCode == 401 || terr.StatusCode == 403 ||
		hasCode(terr, transport.UnauthorizedErrorCode, transport.DeniedErrorCode):
		return fmt.Errorf("%w: %w", ErrUnauthorized, err)
	case terr.StatusCode == 404 ||
		hasCode(terr, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	return err
}

func hasCode(terr *transport.Error, codes ...transport.ErrorCode) bool {
	for _, d := range terr.Errors {
		for _, c := range codes {
			if d.Code == c {
				return true
			}
		}
	}
	return false
}
