{{/* Names: <release>-spibatch, truncated to a DNS-1123 label. */}}
{{- define "spibatch.fullname" -}}
{{- printf "%s-spibatch" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "spibatch.labels" -}}
app.kubernetes.io/name: spibatch
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* The site's name in the ConfigMap: worker pods carry it as their spibatch/site label. */}}
{{- define "spibatch.siteName" -}}
{{ include "spibatch.fullname" . | trunc 40 | trimSuffix "-" }}
{{- end -}}

{{- define "spibatch.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "spibatch.claim" -}}
{{- if .Values.sharedStorage.create -}}{{ include "spibatch.fullname" . }}-shared{{- else -}}{{ required "sharedStorage.existingClaim is required when sharedStorage.create is false" .Values.sharedStorage.existingClaim }}{{- end -}}
{{- end -}}

{{- define "spibatch.runsDir" -}}
{{ trimSuffix "/" .Values.sharedStorage.mountPath }}/{{ .Values.sharedStorage.runsDir }}
{{- end -}}

{{/* The "restricted" Pod Security Standard: pod level ... */}}
{{- define "spibatch.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* ... and container level (root filesystem read-only: /tmp is an emptyDir). */}}
{{- define "spibatch.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "spibatch.env" -}}
- name: HOME
  value: /tmp
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: NUMBA_CACHE_DIR
  value: /tmp/numba
{{- end -}}

{{/* The monitor's allowed Host names (comma-separated): the Service's DNS names, the pod's IP (the
     kubelet's probes; $(POD_IP) is expanded by Kubernetes), the port-forward names, monitor.allowedHosts. */}}
{{- define "spibatch.monitorHosts" -}}
{{- $svc := printf "%s-monitor" (include "spibatch.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- $own := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.monitor.clusterDomain) "$(POD_IP)" "127.0.0.1" "localhost" -}}
{{- concat $own .Values.monitor.allowedHosts | join "," -}}
{{- end -}}
