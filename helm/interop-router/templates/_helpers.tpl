{{/*
Names and labels shared by every template.
*/}}

{{/* Chart name, or nameOverride. */}}
{{- define "interop-router.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every resource: fullnameOverride, else <release>-<chart>, else
<release> when the release name already contains the chart name. Truncated to 52
characters so "<fullname>-<ordinal>" pod names and "<fullname>-peers" stay valid DNS labels.
*/}}
{{- define "interop-router.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "interop-router.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "interop-router.labels" -}}
helm.sh/chart: {{ include "interop-router.chart" . }}
{{ include "interop-router.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select this release's routerd pods. */}}
{{- define "interop-router.selectorLabels" -}}
app.kubernetes.io/name: {{ include "interop-router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Headless Service: stable per-pod DNS names for Raft peers. */}}
{{- define "interop-router.headlessName" -}}
{{- printf "%s-peers" (include "interop-router.fullname" .) }}
{{- end }}

{{/* <headless>.<namespace>.svc.<clusterDomain> */}}
{{- define "interop-router.headlessFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "interop-router.headlessName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* Name peers verify in each other's certificates. */}}
{{- define "interop-router.peerServerName" -}}
{{- default (include "interop-router.headlessFqdn" .) .Values.tls.peerServerName }}
{{- end }}

{{/* Prefix of the per-pod TLS Secrets: pod <fullname>-<i> uses <prefix>-<i>. */}}
{{- define "interop-router.tlsSecretPrefix" -}}
{{- default (printf "%s-tls" (include "interop-router.fullname" .)) .Values.tls.secretPrefix }}
{{- end }}

{{/* Peer address of replica i: call with (dict "root" $ "index" $i). */}}
{{- define "interop-router.peerAddress" -}}
{{- $root := .root }}
{{- printf "%s-%d.%s:%d" (include "interop-router.fullname" $root) (int .index) (include "interop-router.headlessFqdn" $root) (int $root.Values.ports.peer) }}
{{- end }}

{{/* Image reference. */}}
{{- define "interop-router.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where pod i finds its TLS files (inside the projected volume mounted at /etc/routerd/tls). */}}
{{- define "interop-router.tlsDir" -}}
/etc/routerd/tls
{{- end }}

{{/*
A scalar as a TOML value: booleans as is, numbers as integers (Helm reads YAML
numbers as float64, which would print 1000000 as 1e+06), strings quoted.
*/}}
{{- define "interop-router.tomlValue" -}}
{{- if kindIs "bool" . -}}
{{ . }}
{{- else if kindIs "string" . -}}
{{ . | toJson }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{ int64 . }}
{{- else -}}
{{ fail (printf "interop-router: cannot render %v as a TOML value" .) }}
{{- end -}}
{{- end }}

{{/* Host part of a listen address: IPv6 literals need brackets. */}}
{{- define "interop-router.listenHost" -}}
{{- if contains ":" .Values.listenAddress -}}
[{{ .Values.listenAddress }}]
{{- else -}}
{{ .Values.listenAddress }}
{{- end -}}
{{- end }}
