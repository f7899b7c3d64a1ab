{{/* The namespace podmap's objects and pods live in: the value, else the release's. */}}
{{- define "podmap.namespace" -}}
{{- default .Release.Namespace .Values.namespace.name -}}
{{- end -}}

{{/* The image, pinned to the chart's appVersion unless a tag is given; never "latest". */}}
{{- define "podmap.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag \"latest\" is refused: podmapd, podmap-nri and the hook on a node must come from one build; name a version" -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The runtime mode, checked. */}}
{{- define "podmap.runtime" -}}
{{- if not (has .Values.runtime (list "containerd" "crio" "both")) -}}
{{- fail (printf "runtime %q is not one of containerd, crio, both" .Values.runtime) -}}
{{- end -}}
{{- .Values.runtime -}}
{{- end -}}

{{/* Whether podmapd's metrics endpoint listens on the pod's loopback (or not at all). */}}
{{- define "podmap.metricsLocal" -}}
{{- $a := .Values.metrics.address | toString -}}
{{- if or (eq $a "off") (hasPrefix "127." $a) (hasPrefix "localhost:" $a) (hasPrefix "[::1]:" $a) -}}
true
{{- end -}}
{{- end -}}

{{/* The metrics port: what follows the address's last colon. */}}
{{- define "podmap.metricsPort" -}}
{{- .Values.metrics.address | toString | splitList ":" | last | int -}}
{{- end -}}

{{/*
The fail-closed namespaces as the hook reads them (comma-separated), without podmap's own:
the hook exempts POD_NAMESPACE too, but a value that names it would still read as if podmap
could be failed closed.
*/}}
{{- define "podmap.failClosed" -}}
{{- $own := include "podmap.namespace" . -}}
{{- without (.Values.hook.failClosedNamespaces | default list | uniq) $own "" | join "," -}}
{{- end -}}
