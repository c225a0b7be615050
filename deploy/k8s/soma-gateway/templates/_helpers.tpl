{{/* Names and labels shared by every template. */}}
{{/* <release>-soma-gateway, or the release's name alone when it has the chart's in it. */}}
{{- define "soma.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's name: policy_worker -> <release>-soma-gateway-policy-worker. */}}
{{- define "soma.component" -}}
{{- printf "%s-%s" (include "soma.fullname" .root) (.name | replace "_" "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "soma.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .name | replace "_" "-" }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "soma.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name | replace "_" "-" }}
{{- end -}}

{{- define "soma.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The environment every container gets: the ConfigMap, then the secrets by reference. */}}
{{- define "soma.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "soma.fullname" .root }}
  {{- with .root.Values.secrets.extraEnvFrom }}
  - secretRef:
      name: {{ . }}
      optional: true
  {{- end }}
env:
  - name: SERVICE_NAME
    value: {{ .name | quote }}
  - name: POSTGRES_DSN
    valueFrom:
      secretKeyRef:
        name: {{ .root.Values.secrets.postgresDsn.name }}
        key: {{ .root.Values.secrets.postgresDsn.key }}
  - name: REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ .root.Values.secrets.redisUrl.name }}
        key: {{ .root.Values.secrets.redisUrl.key }}
{{- end -}}

{{/* Volumes of every pod: /tmp, the Kafka CA if any, and `credentials` as given. */}}
{{- define "soma.volumeMounts" -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: kafka-credentials
    mountPath: /var/run/soma/kafka
    readOnly: {{ .readOnly }}
  {{- if .root.Values.kafka.caSecret }}
  - name: kafka-ca
    mountPath: /var/run/soma/kafka-ca
    readOnly: true
  {{- end }}
{{- end -}}

{{- define "soma.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 64Mi}
{{- if .root.Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .root.Values.kafka.caSecret }}
    items: [{key: ca.crt, path: ca.crt}]
{{- end }}
{{- end -}}

{{/* A service's own Kafka credentials file, alone (read-only, from the Secret). */}}
{{- define "soma.ownCredentials" -}}
- name: kafka-credentials
  secret:
    secretName: {{ .root.Values.kafka.credentialsSecret }}
    defaultMode: 0440
    items:
      - key: {{ .name }}.json
        path: {{ .name }}.json
{{- end -}}

{{- define "soma.podSpecCommon" -}}
serviceAccountName: {{ include "soma.fullname" . }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A worker's probe: its /metrics listener answers (it binds loopback: asked from inside). */}}
{{- define "soma.metricsProbe" -}}
exec:
  command:
    - python
    - -c
    - import os, urllib.request; urllib.request.urlopen(f"http://127.0.0.1:{os.environ['METRICS_PORT']}/metrics", timeout=3)
{{- end -}}
