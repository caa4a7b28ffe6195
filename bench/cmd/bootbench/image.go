package main

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/microvm-dev/sandbox-operator/internal/devimage"
)

// idleEntrypoint keeps the VM's main process alive, idle, for the whole
// measurement.
var idleEntrypoint = []string{"/bin/sh", "-c", "sleep 3600"}

// imageEnv is the image's ENV.
var imageEnv = []string{"PATH=/bin"}

// registryServer is an in-memory OCI registry on 127.0.0.1 holding the
// benchmark's image.
type registryServer struct {
	reg *devimage.Registry
	ref string
	// layerBytes is the size of the image's only layer, as pushed.
	layerBytes int64
}

// serveBusybox builds a one-layer linux/amd64 image of the host's static
// busybox and its applets (internal/devimage, as `make dev` does) whose
// entrypoint idles, and serves it from an in-memory registry on a free
// loopback port. Nothing is pulled from the internet.
func serveBusybox() (*registryServer, error) {
	files, err := devimage.Busybox("")
	if err != nil {
		return nil, fmt.Errorf("%w (install busybox-static: hack/setup.sh)", err)
	}
	img, err := devimage.Image(files, v1.Config{Entrypoint: idleEntrypoint, Env: imageEnv})
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	var size int64
	for _, l := range layers {
		n, err := l.Size()
		if err != nil {
			return nil, err
		}
		size += n
	}
	reg, err := devimage.Serve("127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ref, err := reg.Push("bootbench/busybox:v1", img)
	if err != nil {
		_ = reg.Close()
		return nil, err
	}
	return &registryServer{reg: reg, ref: ref, layerBytes: size}, nil
}

func (r *registryServer) close() { _ = r.reg.Close() }
