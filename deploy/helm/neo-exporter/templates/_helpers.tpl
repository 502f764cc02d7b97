{{/* Names and labels shared by every object of the chart. */}}

{{- define "neo-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release name, followed by the chart's unless it holds it. */}}
{{- define "neo-exporter.fullname" -}}
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

{{/* What selects the pods: stable across upgrades. */}}
{{- define "neo-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "neo-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: exporter
{{- end }}

{{- define "neo-exporter.labels" -}}
{{ include "neo-exporter.selectorLabels" . }}
app.kubernetes.io/part-of: neo-exporter
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "neo-exporter.secretName" -}}
{{- .Values.credentials.existingSecret | default (include "neo-exporter.fullname" .) }}
{{- end }}

{{/* The Secret's item: given, or named after the kind of credential. */}}
{{- define "neo-exporter.secretKey" -}}
{{- .Values.credentials.secretKey | default (ternary "api-key" "api-token" (eq .Values.credentials.type "apiKey")) }}
{{- end }}

{{- define "neo-exporter.claimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-state" (include "neo-exporter.fullname" .)) }}
{{- end }}

{{/* The PromQL matchers the rules read the exporter's series with. */}}
{{- define "neo-exporter.ruleSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=%q" (include "neo-exporter.fullname" .)) }}
{{- end }}
