{{/* Chart name, overridable. */}}
{{- define "quantserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources, at most 63 characters (a DNS label). */}}
{{- define "quantserve.fullname" -}}
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

{{/* fullname plus "-<suffix>", still at most 63 characters: called with (list $ "suffix"). */}}
{{- define "quantserve.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- $base := include "quantserve.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/* RayService name: KubeRay appends "-<5 chars>" for the RayCluster and "-head-svc"/"-serve-svc" for Services. */}}
{{- define "quantserve.rayServiceName" -}}
{{- include "quantserve.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "quantserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quantserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quantserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "quantserve.labels" -}}
helm.sh/chart: {{ include "quantserve.chart" . }}
{{ include "quantserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quantserve
{{- end }}

{{- define "quantserve.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s-%s" .Chart.AppVersion .Values.image.flavor) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "quantserve.modelsClaimName" -}}
{{- .Values.models.volume.existingClaim | default (include "quantserve.suffixedName" (list . "models")) }}
{{- end }}

{{/* The Secret with the API keys: existingSecret, else "<fullname>-api-keys" (made from apiKeys.keys, or by you). */}}
{{- define "quantserve.apiKeysSecretName" -}}
{{- .Values.apiKeys.existingSecret | default (include "quantserve.suffixedName" (list . "api-keys")) }}
{{- end }}

{{- define "quantserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "quantserve.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Seconds a terminating pod keeps running: the config's drain time (server.drain_timeout_s, capped at
server.limits.request_timeout_s, as no request runs longer) plus terminationGraceMarginSeconds. The defaults are
quantserve.config.ServerConfig's (a test compares them).
*/}}
{{- define "quantserve.terminationGracePeriodSeconds" -}}
{{- $drain := dig "server" "drain_timeout_s" 30 .Values.quantserve | ceil | int64 }}
{{- $timeout := dig "server" "limits" "request_timeout_s" 600 .Values.quantserve | ceil | int64 }}
{{- add (min $drain $timeout) .Values.terminationGraceMarginSeconds }}
{{- end }}

{{/* Seconds an ingress waits for the API's response: the config's request timeout plus the margin. */}}
{{- define "quantserve.ingressTimeoutSeconds" -}}
{{- $timeout := dig "server" "limits" "request_timeout_s" 600 .Values.quantserve | ceil | int64 }}
{{- add $timeout .Values.terminationGraceMarginSeconds }}
{{- end }}

{{/* Where the models folder is mounted: quantserve.models_dir, under the image's WORKDIR when relative. */}}
{{- define "quantserve.modelsPath" -}}
{{- $dir := .Values.quantserve.models_dir | default "models" }}
{{- if isAbs $dir }}{{ clean $dir }}{{ else }}{{ clean (printf "%s/%s" .Values.image.workingDir $dir) }}{{ end }}
{{- end }}

{{/*
The quantserve config as JSON: the `quantserve` values, with serve.enabled set from serve.variants when that list
is not empty. Unknown ids fail here too (the schema catches them first for the shipped config).
*/}}
{{- define "quantserve.config" -}}
{{- $config := deepCopy .Values.quantserve }}
{{- $wanted := .Values.serve.variants }}
{{- if $wanted }}
{{- $known := list }}
{{- range $model := $config.models }}
{{- range $variant := $model.variants }}
{{- $id := printf "%s:%s" $model.name $variant.name }}
{{- $known = append $known $id }}
{{- $serve := $variant.serve | default dict }}
{{- $_ := set $serve "enabled" (has $id $wanted) }}
{{- $_ := set $variant "serve" $serve }}
{{- end }}
{{- end }}
{{- range $wanted }}
{{- if not (has . $known) }}
{{- fail (printf "serve.variants: unknown variant %q; the quantserve config has %s" . (join ", " $known)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $config }}
{{- end }}

{{/*
What the models init container reads, as JSON: the pod templates carry its hash, so changing a source, a build spec
or the artefacts' URI rolls out a new Ray cluster (which gets the new variants first), while serve-only changes update
Serve in place.
*/}}
{{- define "quantserve.buildInputs" -}}
{{- $models := list }}
{{- range $model := .Values.quantserve.models }}
{{- $variants := list }}
{{- range $model.variants }}
{{- $variants = append $variants (dict "name" .name "build" .build) }}
{{- end }}
{{- $models = append $models (dict "name" $model.name "source" $model.source "variants" $variants) }}
{{- end }}
{{- $source := dict "source" .Values.models.source "uri" .Values.models.pull.uri "variants" .Values.models.build.variants }}
{{- toJson (dict "models_dir" .Values.quantserve.models_dir "models" $models "source" $source) }}
{{- end }}

{{/* Ray Serve's config file (serveConfigV2); mirrors serving/serve_config.py:build_serve_config. */}}
{{- define "quantserve.serveConfig" -}}
{{- $env := dict }}
{{- if .Values.serve.throughputOptimized }}
{{- $_ := set $env "RAY_SERVE_THROUGHPUT_OPTIMIZED" "1" }}
{{- end }}
{{- if .Values.serve.haproxy }}
{{- $_ := set $env "RAY_SERVE_ENABLE_HA_PROXY" "1" }}
{{- end }}
{{- $logging := dig "server" "logging" dict .Values.quantserve }}
{{- $_ := set $env "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE" (toString ($logging.buffer_records | default 1)) }}
{{- /* Every quantserve process of every pod writes its metrics there (the Ray processes themselves must not). */}}
{{- $_ := set $env "PROMETHEUS_MULTIPROC_DIR" .Values.monitoring.exporter.multiprocessDir }}
{{- $app := dict "name" "quantserve" "route_prefix" "/" "import_path" "serving.app:build_app" }}
{{- $_ := set $app "args" (dict "config" (include "quantserve.config" . | fromJson)) }}
{{- $_ := set $app "runtime_env" (dict "env_vars" $env) }}
{{- $http := dict "host" .Values.serve.host "port" .Values.serve.port }}
{{- toYaml (dict "proxy_location" "EveryNode" "http_options" $http "applications" (list $app)) }}
{{- end }}
