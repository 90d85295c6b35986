{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: <release>-<chart> unless the release name already contains the chart name.
*/}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value: name-version.
*/}}
{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" . }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the release's pods (immutable once deployed).
*/}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Service account name.
*/}}
{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{/*
terminationGracePeriodSeconds: the preStop sleep runs first, then SIGTERM starts a
drain of at most herald.shutdownGrace seconds; the margin covers process exit.
Always greater than herald.shutdownGrace.
*/}}
{{- define "herald.terminationGracePeriodSeconds" -}}
{{- add (int .Values.herald.shutdownGrace) (int .Values.lifecycle.preStopSleepSeconds) (int .Values.lifecycle.terminationGraceMarginSeconds) }}
{{- end }}

{{/*
Name of the Secret holding herald.toml, or "" when Herald runs its default app.
*/}}
{{- define "herald.configSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.apps }}
{{- printf "%s-config" (include "herald.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Key of herald.toml in that Secret.
*/}}
{{- define "herald.configSecretKey" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecretKey }}
{{- else }}
{{- print "herald.toml" }}
{{- end }}
{{- end }}

{{/*
herald.toml with one [[apps]] table per entry of .Values.apps. Scalars and lists are
written with toJson: JSON strings, numbers, booleans and string arrays are valid TOML.
*/}}
{{- define "herald.configToml" -}}
# Rendered by the Herald Helm chart from .Values.apps; see docs/configuration.md.
{{- range $app := .Values.apps }}

[[apps]]
{{- range $k, $v := omit $app "webhooks" }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- range $hook := $app.webhooks }}

[[apps.webhooks]]
{{- range $k, $v := $hook }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuse settings Herald itself would refuse at start, with the value named.
*/}}
{{- define "herald.validate" -}}
{{- if and (not (kindIs "invalid" .Values.herald.drainWindow)) (gt (int .Values.herald.drainWindow) (int .Values.herald.shutdownGrace)) }}
{{- fail (printf "herald.drainWindow (%d) must be at most herald.shutdownGrace (%d)" (int .Values.herald.drainWindow) (int .Values.herald.shutdownGrace)) }}
{{- end }}
{{- if and (eq .Values.adapter "redis-cluster") (empty .Values.redisCluster.nodes) (empty .Values.redisCluster.existingSecret) }}
{{- fail "adapter is redis-cluster: set redisCluster.nodes (at least one seed URL) or redisCluster.existingSecret" }}
{{- end }}
{{- if and (eq .Values.adapter "nats") (empty .Values.nats.servers) (empty .Values.nats.existingSecret) }}
{{- fail "adapter is nats: set nats.servers or nats.existingSecret" }}
{{- end }}
{{- if and (eq .Values.adapter "redis") (empty .Values.redis.existingSecret) (empty .Values.redis.url) }}
{{- fail "adapter is redis: set redis.url or redis.existingSecret" }}
{{- end }}
{{- if le (int .Values.nodeTimeoutMs) (mul 2 (int .Values.heartbeatIntervalMs)) }}
{{- fail (printf "nodeTimeoutMs (%d) must be more than twice heartbeatIntervalMs (%d)" (int .Values.nodeTimeoutMs) (int .Values.heartbeatIntervalMs)) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (eq .Values.adapter "local") (not .Values.autoscaling.enabled) }}
{{- fail "replicaCount > 1 with adapter local: pods would not share channels; choose redis, redis-cluster or nats" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (eq .Values.adapter "local") }}
{{- fail "autoscaling with adapter local: pods would not share channels; choose redis, redis-cluster or nats" }}
{{- end }}
{{- end }}
