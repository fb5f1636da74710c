{{/*
Pod template of one Ray node group. Called with (dict "root" $ "group" <group values> "component" <name> "head" <bool>
"gpus" <int>). KubeRay adds `ray start` to the first container and its own labels.
*/}}
{{- define "quantserve.rayPodTemplate" -}}
{{- $root := .root }}
{{- $values := $root.Values -}}
metadata:
  labels:
    {{- with $values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- include "quantserve.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    checksum/build-inputs: {{ include "quantserve.buildInputs" $root | sha256sum }}
spec:
  {{- with $values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "quantserve.serviceAccountName" $root }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- if not .head }}
  {{- /* The head keeps its token: the autoscaler sidecar KubeRay adds to it talks to the Kubernetes API. */}}
  automountServiceAccountToken: false
  {{- end }}
  {{- /* The metrics exporter marks dead the processes whose live gauges it finds: it must see the Ray container's. */}}
  shareProcessNamespace: true
  terminationGracePeriodSeconds: {{ include "quantserve.terminationGracePeriodSeconds" $root }}
  securityContext:
    {{- toYaml $values.podSecurityContext | nindent 4 }}
  {{- range $key := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "runtimeClassName" }}
  {{- with index $.group $key }}
  {{ $key }}:
    {{- if kindIs "string" . }} {{ . }}{{ else }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
  {{- end }}
  {{- $fillsModels := and (ne $values.models.source "none") (or .head (ne $values.models.volume.type "claim")) }}
  {{- if $fillsModels }}
  initContainers:
    {{- include "quantserve.modelsContainer" $root | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" .head }}
      image: {{ include "quantserve.image" $root }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      workingDir: {{ $values.image.workingDir }}
      ports:
        - {name: serve, containerPort: {{ $values.serve.port }}}
        - {name: metrics, containerPort: {{ $values.ray.metricsExportPort }}}
        {{- if .head }}
        - {name: gcs, containerPort: 6379}
        - {name: dashboard, containerPort: {{ $values.ray.dashboardPort }}}
        - {name: client, containerPort: 10001}
        {{- end }}
      env:
        {{- include "quantserve.env" $root | trim | nindent 8 }}
      {{- $resources := deepCopy (.group.resources | default dict) }}
      {{- if .gpus }}
      {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" .gpus) ($resources.limits | default dict)) }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml $values.securityContext | nindent 8 }}
      {{- /* Workers only: the head keeps KubeRay's probes (see probes in values.yaml). */}}
      {{- if and (not .head) $values.probes.readiness.enabled }}
      readinessProbe:
        httpGet: {path: /ready, port: serve}
        {{- toYaml (omit $values.probes.readiness "enabled") | nindent 8 }}
      {{- end }}
      {{- if and (not .head) $values.probes.liveness.enabled }}
      startupProbe:
        httpGet: {path: /health, port: serve}
        {{- toYaml $values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /health, port: serve}
        {{- toYaml (omit $values.probes.liveness "enabled") | nindent 8 }}
      {{- end }}
      volumeMounts:
        {{- include "quantserve.volumeMounts" $root | nindent 8 }}
        - {name: metrics, mountPath: {{ $values.monitoring.exporter.multiprocessDir }}}
        - {name: dshm, mountPath: /dev/shm}
    {{- include "quantserve.exporterContainer" $root | nindent 4 }}
  volumes:
    {{- include "quantserve.modelsVolume" $root | nindent 4 }}
    - name: config
      configMap:
        name: {{ include "quantserve.suffixedName" (list $root "config") }}
    - name: tmp
      emptyDir: {}
    - name: metrics
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $values.shmSize }}
{{- end }}

{{/* The models volume: a node-local emptyDir per pod, a claim per pod (ephemeral), or one shared claim. */}}
{{- define "quantserve.modelsVolume" -}}
{{- $volume := .Values.models.volume -}}
- name: models
  {{- if eq $volume.type "claim" }}
  persistentVolumeClaim:
    claimName: {{ include "quantserve.modelsClaimName" . }}
  {{- else if eq $volume.type "ephemeral" }}
  ephemeral:
    volumeClaimTemplate:
      metadata:
        labels:
          {{- include "quantserve.selectorLabels" . | nindent 10 }}
      spec:
        accessModes:
          {{- toYaml $volume.accessModes | nindent 10 }}
        {{- with $volume.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ required "models.volume.size is required for an ephemeral volume" $volume.size }}
  {{- else }}
  emptyDir:
    {{- with $volume.size }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
  {{- end }}
{{- end }}

{{/*
The init container that fills the models volume before Ray starts: `quantserve quantize pull` (object storage, every
file checked against the manifest's sha256), `quantserve quantize build` (it skips variants built with the same
inputs), or a copy of the variants baked into the image (the volume is mounted elsewhere so that they show).
*/}}
{{- define "quantserve.modelsContainer" -}}
{{- $models := .Values.models -}}
- name: models-{{ $models.source }}
  image: {{ include "quantserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  workingDir: {{ .Values.image.workingDir }}
  {{- if eq $models.source "image" }}
  command: [cp, -a, {{ printf "%s/." (include "quantserve.modelsPath" .) }}, /mnt/models/]
  {{- else if eq $models.source "pull" }}
  command: [quantserve, quantize, pull, {{ required "models.pull.uri is required with models.source pull" $models.pull.uri | quote }}, --config, /etc/quantserve/quantserve.yaml]
  {{- with $models.pull.credentialsSecret }}
  envFrom:
    - secretRef: {name: {{ . }}}
  {{- end }}
  {{- else }}
  command: [quantserve, quantize, build, --config, /etc/quantserve/quantserve.yaml, --variants, {{ $models.build.variants | quote }}]
  {{- end }}
  env:
    {{- include "quantserve.baseEnv" . | trim | nindent 4 }}
    {{- if eq $models.source "pull" }}
    {{- with $models.pull.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- end }}
  resources:
    {{- toYaml (eq $models.source "build" | ternary $models.build.resources $models.pull.resources) | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- if eq $models.source "image" }}
    - {name: models, mountPath: /mnt/models}
    {{- else }}
    {{- include "quantserve.volumeMounts" . | nindent 4 }}
    {{- end }}
{{- end }}

{{/*
Serves this pod's quantserve metrics (the multiprocess folder every quantserve process of the pod writes to) on the
exporter port: the router's request metrics from the router's pod only, each replica's from its own pod.
*/}}
{{- define "quantserve.exporterContainer" -}}
- name: metrics-exporter
  image: {{ include "quantserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  workingDir: {{ .Values.image.workingDir }}
  command: [python, /etc/quantserve/metrics_exporter.py, --port, {{ .Values.monitoring.exporter.port | quote }}]
  env:
    - {name: PROMETHEUS_MULTIPROC_DIR, value: {{ .Values.monitoring.exporter.multiprocessDir }}}
    - {name: PYTHONDONTWRITEBYTECODE, value: "1"}
    - {name: HOME, value: /tmp/home}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - {name: qs-metrics, containerPort: {{ .Values.monitoring.exporter.port }}}
  readinessProbe:
    httpGet: {path: /metrics, port: qs-metrics}
    periodSeconds: 30
  resources:
    {{- toYaml .Values.monitoring.exporter.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: metrics, mountPath: {{ .Values.monitoring.exporter.multiprocessDir }}}
    - {name: config, mountPath: /etc/quantserve, readOnly: true}
    - {name: tmp, mountPath: /tmp}
{{- end }}

{{- define "quantserve.volumeMounts" -}}
- {name: models, mountPath: {{ include "quantserve.modelsPath" . }}}
- {name: config, mountPath: /etc/quantserve, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end }}

{{/* Environment of every quantserve container. The root filesystem is read-only: caches go to /tmp. */}}
{{- define "quantserve.baseEnv" -}}
{{- if .Values.serve.throughputOptimized }}
- {name: RAY_SERVE_THROUGHPUT_OPTIMIZED, value: "1"}
{{- end }}
{{- if .Values.serve.haproxy }}
- {name: RAY_SERVE_ENABLE_HA_PROXY, value: "1"}
{{- end }}
- {name: RAY_USAGE_STATS_ENABLED, value: "0"}
- {name: HOME, value: /tmp/home}
- {name: XDG_CACHE_HOME, value: /tmp/cache}
- {name: HF_HUB_OFFLINE, value: "1"}
- {name: PYTHONDONTWRITEBYTECODE, value: "1"}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Environment of the Ray containers: the base, and the API keys the router reads. */}}
{{- define "quantserve.env" -}}
{{ include "quantserve.baseEnv" . }}
{{- if .Values.apiKeys.enabled }}
- name: QUANTSERVE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "quantserve.apiKeysSecretName" . }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- end }}
