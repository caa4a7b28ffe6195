{{/* The chart's name (nameOverride wins). */}}
{{- define "sandbox-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: fullnameOverride, else the release name when
it already contains the chart's name, else <release>-<chart>. Truncated so
that the longest suffix ("-node-agent-metrics") still fits in 63 characters.
*/}}
{{- define "sandbox-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 44 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 44 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "sandbox-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "sandbox-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sandbox-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (list . "manager"). */}}
{{- define "sandbox-operator.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "sandbox-operator.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Labels of one component's objects: include with (list . "manager"). */}}
{{- define "sandbox-operator.componentLabels" -}}
{{ include "sandbox-operator.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Labels of one component's Pods: include with (list . "manager"). Not the
chart's or the app's version: a Pod template that changed with every chart
version would restart the manager and every node agent on an upgrade that
changes nothing else.
*/}}
{{- define "sandbox-operator.podLabels" -}}
{{- $ctx := index . 0 -}}
{{ include "sandbox-operator.selectorLabels" . }}
app.kubernetes.io/part-of: sandbox-operator
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sandbox-operator.manager.serviceAccountName" -}}
{{- default (printf "%s-manager" (include "sandbox-operator.fullname" .)) .Values.manager.serviceAccount.name }}
{{- end }}

{{- define "sandbox-operator.nodeAgent.serviceAccountName" -}}
{{- default (printf "%s-node-agent" (include "sandbox-operator.fullname" .)) .Values.nodeAgent.serviceAccount.name }}
{{- end }}

{{/* The Service in front of the manager's access API (--access-service). */}}
{{- define "sandbox-operator.accessServiceName" -}}
{{- printf "%s-access" (include "sandbox-operator.fullname" .) }}
{{- end }}

{{/* The cert-manager Certificate and Secret of the access API's serving certificate. */}}
{{- define "sandbox-operator.accessCertificateName" -}}
{{- printf "%s-access-serving" (include "sandbox-operator.fullname" .) }}
{{- end }}

{{/* Where the manager mounts that Secret (--access-cert-dir). */}}
{{- define "sandbox-operator.accessCertDir" -}}
/var/run/sandbox-operator/access-serving
{{- end }}

{{/* image: include with (list .Values.manager.image .Chart). */}}
{{- define "sandbox-operator.image" -}}
{{- $img := index . 0 -}}
{{- printf "%s:%s" $img.repository (default (index . 1).AppVersion $img.tag) }}
{{- end }}

{{/*
The namespace the generated Roles name for the operator's own namespace
(the +kubebuilder:rbac markers say namespace=sandbox-system, the default
install's); the chart renders them in the release namespace instead.
*/}}
{{- define "sandbox-operator.markerNamespace" -}}
sandbox-system
{{- end }}

{{/*
Renders the ClusterRoles and Roles of one generated RBAC file under
files/rbac (copied from config/rbac by `make manifests`), each with a binding
to one ServiceAccount. Include with
(dict "ctx" . "file" "files/rbac/manager-role.yaml" "suffix" "manager" "serviceAccount" "name").
The rules are the generated ones, unchanged; only names and the operator's
namespace are the release's.
*/}}
{{- define "sandbox-operator.rbacFromFile" -}}
{{- $ctx := .ctx }}
{{- $name := printf "%s-%s" (include "sandbox-operator.fullname" $ctx) .suffix }}
{{- $sa := .serviceAccount }}
{{- $component := .component }}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($ctx.Files.Get .file) -1 }}
{{- $obj := fromYaml $doc }}
{{- if $obj.kind }}
{{- $ns := "" }}
{{- if eq $obj.kind "Role" }}
{{- $ns = $obj.metadata.namespace }}
{{- if eq $ns (include "sandbox-operator.markerNamespace" $ctx) }}
{{- $ns = $ctx.Release.Namespace }}
{{- end }}
{{- end }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $obj.kind }}
metadata:
  name: {{ $name }}
  {{- with $ns }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "sandbox-operator.componentLabels" (list $ctx $component) | nindent 4 }}
rules:
{{- toYaml $obj.rules | nindent 0 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: {{ $obj.kind }}Binding
metadata:
  name: {{ $name }}
  {{- with $ns }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "sandbox-operator.componentLabels" (list $ctx $component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: {{ $obj.kind }}
  name: {{ $name }}
subjects:
- kind: ServiceAccount
  name: {{ $sa }}
  namespace: {{ $ctx.Release.Namespace }}
{{- end }}
{{- end }}
{{- end }}
