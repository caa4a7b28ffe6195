package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/microvm-dev/sandbox-operator/internal/guest/hostconn"
	"github.com/microvm-dev/sandbox-operator/internal/guest/protocol"
)

// The files subresource: one file operation per request, in the guest's
// root, as the sandbox's user unless "user" says otherwise.
//
//	GET  ?op=read&path=P[&offset=N&length=N]   the file's bytes
//	GET  ?op=tar&path=P                        a tar archive of P
//	GET  ?op=list|stat|exists&path=P           a JSON protocol.FileResult
//	POST ?op=write&path=P[&mode=0644&append=true&createOnly=true]   body: the bytes
//	POST ?op=untar&path=DIR                    body: a tar archive
//	POST ?op=mkdir|remove|copy|rename&path=P[&dest=Q&recursive=true&mode=0755]
//
// Reads are GET and changes are POST, so that RBAC tells them apart
// (sandboxes/files get vs create). Failures are a metav1.Status whose code
// follows the guest's error kind (NotFound 404, PermissionDenied 403,
// Exists 409, Draining 503, ...).

var readOps = map[protocol.FileOp]bool{protocol.FileRead: true, protocol.FileTar: true, protocol.FileList: true, protocol.FileStat: true, protocol.FileExists: true}

func serveFiles(w http.ResponseWriter, req *http.Request, gc *hostconn.Conn, sandbox string) {
	q := req.URL.Query()
	op := protocol.FileOp(q.Get("op"))
	fr := protocol.FileRequest{Op: op, Path: q.Get("path"), Dest: q.Get("dest"), User: q.Get("user"),
		Recursive: q.Get("recursive") == "true", Append: q.Get("append") == "true", CreateOnly: q.Get("createOnly") == "true"}
	if m := q.Get("mode"); m != "" {
		mode, err := strconv.ParseUint(m, 8, 32)
		if err != nil {
			writeStatus(w, apierrors.NewBadRequest("mode must be octal, e.g. 0644"))
			return
		}
		fr.Mode = uint32(mode)
	}
	for k, dst := range map[string]*int64{"offset": &fr.Offset, "length": &fr.Length} {
		if v := q.Get(k); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				writeStatus(w, apierrors.NewBadRequest(k+" must be a non-negative integer"))
				return
			}
			*dst = n
		}
	}
	isRead, known := readOps[op]
	switch op {
	case protocol.FileWrite, protocol.FileUntar, protocol.FileMkdir, protocol.FileRemove, protocol.FileCopy, protocol.FileRename:
		known = true
	}
	if !known || fr.Path == "" {
		writeStatus(w, apierrors.NewBadRequest("op must be one of read, tar, list, stat, exists, write, untar, mkdir, remove, copy, rename, and path is required"))
		return
	}
	if isRead != (req.Method == http.MethodGet) {
		writeStatus(w, apierrors.NewMethodNotSupported(protocolResource, req.Method))
		return
	}
	var upload io.Reader
	if op == protocol.FileWrite || op == protocol.FileUntar {
		upload = req.Body
	}
	var download io.Writer
	var lw *lazyWriter
	if op == protocol.FileRead || op == protocol.FileTar {
		ct := "application/octet-stream"
		if op == protocol.FileTar {
			ct = "application/x-tar"
		}
		lw = &lazyWriter{w: w, contentType: ct}
		download = lw
	}
	res, err := gc.File(req.Context(), fr, upload, download)
	if err != nil {
		if lw != nil && lw.started {
			// Bytes already went out with a 200: only cutting the
			// connection tells the client the body is incomplete.
			panic(http.ErrAbortHandler)
		}
		writeStatus(w, fileError(err, sandbox))
		return
	}
	if lw != nil {
		if !lw.started {
			w.Header().Set("Content-Type", lw.contentType)
			w.WriteHeader(http.StatusOK)
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// protocolResource names the files subresource in Status errors.
var protocolResource = schema.GroupResource{Group: "subresources.sandbox.microvm.dev", Resource: "sandboxes/files"}

// lazyWriter sends the 200 and its headers with the first byte, so that a
// failure before any data is still a proper error status.
type lazyWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", l.contentType)
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

// fileError maps a guest failure to a Status whose message names the
// sandbox ("sandbox team/dev: lstat /x: no such file or directory").
func fileError(err error, sandbox string) *apierrors.StatusError {
	var ge *hostconn.GuestError
	if !errors.As(err, &ge) {
		return apierrors.NewInternalError(fmt.Errorf("sandbox %s: %w", sandbox, err))
	}
	code := map[protocol.ErrorKind]int32{
		protocol.ErrNotFound: http.StatusNotFound, protocol.ErrPermissionDenied: http.StatusForbidden,
		protocol.ErrExists: http.StatusConflict, protocol.ErrNotDirectory: http.StatusBadRequest,
		protocol.ErrIsDirectory: http.StatusBadRequest, protocol.ErrNotEmpty: http.StatusConflict,
		protocol.ErrReadOnly: http.StatusForbidden, protocol.ErrInvalid: http.StatusBadRequest,
		protocol.ErrDraining: http.StatusServiceUnavailable,
	}[ge.Kind]
	if code == 0 {
		code = http.StatusInternalServerError
	}
	return &apierrors.StatusError{ErrStatus: metav1.Status{Status: metav1.StatusFailure, Code: code,
		Reason: metav1.StatusReason(ge.Kind), Message: "sandbox " + sandbox + ": " + ge.Message}}
}

func writeStatus(w http.ResponseWriter, err *apierrors.StatusError) {
	st := err.Status()
	st.TypeMeta = metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(int(st.Code))
	_ = json.NewEncoder(w).Encode(&st)
}
