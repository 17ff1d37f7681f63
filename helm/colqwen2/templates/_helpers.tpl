{{/* Chart name. */}}
{{- define "colqwen2.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name when it already contains the chart name (`colqwen2` by default). */}}
{{- define "colqwen2.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "colqwen2.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; `app` keeps the original deployment's `kubectl logs -l app=colqwen2` working. */}}
{{- define "colqwen2.selectorLabels" -}}
app: {{ include "colqwen2.name" . }}
app.kubernetes.io/name: {{ include "colqwen2.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "colqwen2.labels" -}}
helm.sh/chart: {{ include "colqwen2.chart" . }}
{{ include "colqwen2.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "colqwen2.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "colqwen2.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "colqwen2.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "colqwen2.claimName" -}}
{{- default (printf "%s-artifacts" (include "colqwen2.fullname" .)) .Values.artifacts.persistence.existingClaim -}}
{{- end -}}

{{- define "colqwen2.adminSecret" -}}
{{- default (printf "%s-triton-admin" (include "colqwen2.fullname" .)) .Values.triton.adminKey.existingSecret -}}
{{- end -}}

{{- define "colqwen2.tokenSecret" -}}
{{- default (printf "%s-gateway-token" (include "colqwen2.fullname" .)) .Values.gateway.auth.existingSecret -}}
{{- end -}}
