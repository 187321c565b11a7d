{{/* The chart's name, cut to the 63 characters Kubernetes allows in a label. */}}
{{- define "kmeter.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A prefix for the release's objects: the release name, plus the chart's if it differs. */}}
{{- define "kmeter.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The app.kubernetes.io labels every object of the chart carries. */}}
{{- define "kmeter.labels" -}}
app.kubernetes.io/name: {{ include "kmeter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "kmeter.operator.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "kmeter.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "kmeter.injector.serviceAccountName" -}}
{{- default (printf "%s-injector" (include "kmeter.fullname" .)) .Values.injector.serviceAccount.name -}}
{{- end -}}

{{- define "kmeter.api.serviceAccountName" -}}
{{- default (printf "%s-api" (include "kmeter.fullname" .)) .Values.api.serviceAccount.name -}}
{{- end -}}
