{{/* Names and labels shared by every template. */}}

{{- define "voile.chart" -}}
{{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "voile.image" -}}
{{ printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Labels on every object; app.kubernetes.io/part-of=voile finds all of them. */}}
{{- define "voile.labels" -}}
helm.sh/chart: {{ include "voile.chart" . }}
app.kubernetes.io/name: voile
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: voile
{{- end }}

{{/* Selector labels of one component (operator or agent): stable across upgrades. */}}
{{- define "voile.selectorLabels" -}}
app.kubernetes.io/name: voile
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "voile.operator.name" -}}voile-operator{{- end }}
{{- define "voile.agent.name" -}}voile-agent{{- end }}

{{/* Environment both programs read (VOILE_<OPTION>, see docs/install.md). */}}
{{- define "voile.commonEnv" -}}
- name: VOILE_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: VOILE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: VOILE_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
{{- end }}

{{/* The conflist of cni.mode=primary: the voile plugin alone (the runtime brings up lo); the
network is the Pods' default, a Pod's annotation voile.dev/network may choose another. */}}
{{- define "voile.cniConflist" -}}
{{- $c := .Values.cni -}}
{{- $plugin := dict "type" "voile" "network" $c.network "socket" (printf "%s/agent.sock" .Values.agent.runDir) "spoolDir" $c.spoolDir "capabilities" (dict "ips" true "mac" true) "podNetworkAnnotation" true -}}
{{- dict "cniVersion" "1.0.0" "name" $c.network "plugins" (list $plugin) | toJson -}}
{{- end }}
