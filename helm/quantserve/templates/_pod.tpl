{{/*
Pod template of one Ray node group. Called with (dict "root" $ "group" <group values> "component" <name> "head" <bool>
"gpus" <int>). KubeRay adds `ray start` to the first container and its own labels.
*/}}
{{- define "quantserve.rayPodTemplate" -}}
{{- $root := .root }}
{{- $values := $root.Values -}}
metadata:
  labels:
    {{- include "quantserve.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    checksum/build-inputs: {{ include "quantserve.buildInputs" $root | sha256sum }}
spec:
  {{- with $values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if not .head }}
  {{- /* The head keeps its token: the autoscaler sidecar KubeRay adds to it talks to the Kubernetes API. */}}
  automountServiceAccountToken: false
  {{- end }}
  securityContext:
    {{- toYaml $values.podSecurityContext | nindent 4 }}
  {{- with .group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and .head $values.modelBuild.enabled }}
  initContainers:
    {{- include "quantserve.buildContainer" $root | nindent 4 }}
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
        {{- include "quantserve.volumeMounts" (dict "root" $root "modelsReadOnly" true) | nindent 8 }}
        - {name: dshm, mountPath: /dev/shm}
  volumes:
    - name: models
      {{- if or $values.modelStorage.create $values.modelStorage.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ include "quantserve.modelsClaimName" $root }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    - name: config
      configMap:
        name: {{ include "quantserve.suffixedName" (list $root "config") }}
    - name: tmp
      emptyDir: {}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $values.shmSize }}
{{- end }}

{{/* `quantserve quantize build` into the models volume; it skips variants whose inputs are unchanged. */}}
{{- define "quantserve.buildContainer" -}}
- name: quantize-build
  image: {{ include "quantserve.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  workingDir: {{ .Values.image.workingDir }}
  command: [quantserve, quantize, build, --config, /etc/quantserve/quantserve.yaml, --variants, {{ .Values.modelBuild.variants | quote }}]
  env:
    {{- include "quantserve.env" . | trim | nindent 4 }}
  resources:
    {{- toYaml .Values.modelBuild.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "quantserve.volumeMounts" (dict "root" . "modelsReadOnly" false) | nindent 4 }}
{{- end }}

{{- define "quantserve.volumeMounts" -}}
- name: models
  mountPath: {{ include "quantserve.modelsPath" .root }}
  readOnly: {{ .modelsReadOnly }}
- {name: config, mountPath: /etc/quantserve, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end }}

{{/* Environment of every quantserve container. The root filesystem is read-only: caches go to /tmp. */}}
{{- define "quantserve.env" -}}
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
{{- if .Values.apiKeys.enabled }}
- name: QUANTSERVE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "quantserve.apiKeysSecretName" . }}
      key: {{ .Values.apiKeys.secretKey }}
{{- end }}
{{- end }}
