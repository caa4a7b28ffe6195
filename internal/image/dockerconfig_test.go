package image

import (
	"encoding/base64"
	"testing"

	. "github.com/onsi/gomega"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
)

func TestAuthenticatorPicksTheEntryForTheRegistry(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name    string
		image   string
		auth    Auth
		want    *authn.AuthConfig // nil: anonymous
		wantErr bool
	}{
		{
			name:  "an exact host and port matches",
			image: "registry:5000/app:v1",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"auth":"` + b64("u:p") + `"}}}`)}},
			want:  &authn.AuthConfig{Username: "u", Password: "p"},
		},
		{
			name:  "another port does not match",
			image: "registry:5001/app:v1",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"auth":"` + b64("u:p") + `"}}}`)}},
		},
		{
			name:  "a scheme and a trailing slash are ignored",
			image: "registry.example.com/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"https://registry.example.com/":{"username":"u","password":"p"}}}`)}},
			want:  &authn.AuthConfig{Username: "u", Password: "p"},
		},
		{
			name:  "Docker Hub's v1 key matches docker.io images",
			image: "python:3.12",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"` + b64("hub:pw") + `"}}}`)}},
			want:  &authn.AuthConfig{Username: "hub", Password: "pw"},
		},
		{
			name:  "a docker.io key matches docker.io images",
			image: "docker.io/library/python:3.12",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"docker.io":{"auth":"` + b64("hub:pw") + `"}}}`)}},
			want:  &authn.AuthConfig{Username: "hub", Password: "pw"},
		},
		{
			name:  "a wildcard matches one DNS label",
			image: "eu.registry.example.com/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"*.registry.example.com":{"auth":"` + b64("w:c") + `"}}}`)}},
			want:  &authn.AuthConfig{Username: "w", Password: "c"},
		},
		{
			name:  "a wildcard does not match two DNS labels",
			image: "a.eu.registry.example.com/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"*.registry.example.com":{"auth":"` + b64("w:c") + `"}}}`)}},
		},
		{
			name:  "the longest repository path prefix wins over the bare host",
			image: "registry.example.com/team/app",
			auth: Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{
				"registry.example.com":{"auth":"` + b64("host:h") + `"},
				"registry.example.com/team":{"auth":"` + b64("team:t") + `"},
				"registry.example.com/other":{"auth":"` + b64("other:o") + `"}}}`)}},
			want: &authn.AuthConfig{Username: "team", Password: "t"},
		},
		{
			name:  "a path prefix matches whole path segments only",
			image: "registry.example.com/teamster/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry.example.com/team":{"auth":"` + b64("team:t") + `"}}}`)}},
		},
		{
			name:  "an exact host wins over a wildcard",
			image: "eu.example.com/app",
			auth: Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{
				"*.example.com":{"auth":"` + b64("glob:g") + `"},
				"eu.example.com":{"auth":"` + b64("exact:e") + `"}}}`)}},
			want: &authn.AuthConfig{Username: "exact", Password: "e"},
		},
		{
			name:  "a legacy dockercfg document is understood",
			image: "registry:5000/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"registry:5000":{"auth":"` + b64("old:cfg") + `"}}`)}},
			want:  &authn.AuthConfig{Username: "old", Password: "cfg"},
		},
		{
			name:  "an identity token is passed on",
			image: "registry:5000/app",
			auth:  Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"identitytoken":"tok"}}}`)}},
			want:  &authn.AuthConfig{IdentityToken: "tok"},
		},
		{
			name:  "a later secret is used when the first has no entry for the registry",
			image: "registry:5000/app",
			auth: Auth{DockerConfigs: [][]byte{
				[]byte(`{"auths":{"elsewhere":{"auth":"` + b64("a:b") + `"}}}`),
				[]byte(`{"auths":{"registry:5000":{"auth":"` + b64("c:d") + `"}}}`),
			}},
			want: &authn.AuthConfig{Username: "c", Password: "d"},
		},
		{
			name:  "a username and password win over pull secrets",
			image: "registry:5000/app",
			auth: Auth{Username: "direct", Password: "pw",
				DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"auth":"` + b64("c:d") + `"}}}`)}},
			want: &authn.AuthConfig{Username: "direct", Password: "pw"},
		},
		{
			name:    "auth that is not base64 is an error",
			image:   "registry:5000/app",
			auth:    Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"auth":"%%%"}}}`)}},
			wantErr: true,
		},
		{
			name:    "auth without a colon is an error",
			image:   "registry:5000/app",
			auth:    Auth{DockerConfigs: [][]byte{[]byte(`{"auths":{"registry:5000":{"auth":"` + b64("nocolon") + `"}}}`)}},
			wantErr: true,
		},
		{
			name:    "a document that is not JSON is an error",
			image:   "registry:5000/app",
			auth:    Auth{DockerConfigs: [][]byte{[]byte(`nope`)}},
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			ref, err := name.ParseReference(tt.image)
			g.Expect(err).NotTo(HaveOccurred())

			a, err := tt.auth.authenticator(ref.Context())
			if tt.wantErr {
				g.Expect(err).To(MatchError(ErrInvalidReference))
				return
			}
			g.Expect(err).NotTo(HaveOccurred())
			if tt.want == nil {
				g.Expect(a).To(Equal(authn.Anonymous))
				return
			}
			got, err := a.Authorization()
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(*got).To(Equal(*tt.want))
		})
	}
}
