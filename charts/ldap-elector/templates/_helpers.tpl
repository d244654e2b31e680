{{/*
Naming and labels. Every object of this chart carries the app.kubernetes.io/* labels
(BSI APP.4.4.A8); the selector labels are the stable subset used by the Deployments,
Service, PodDisruptionBudgets, NetworkPolicies and spread constraints. The admission
server's pods are component "webhook", the controller's "controller", so no selector of
one ever matches the other's pods.
*/}}

{{- define "ldap-elector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Base name of the release's objects: "<release>" if it already contains the chart name. */}}
{{- define "ldap-elector.fullname" -}}
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

{{/*
Name of the admission server's Deployment, Service, ServiceAccount and RBAC objects. Kept
from the single-Deployment chart: a Deployment's selector is immutable, so helm upgrade
must find the same name and labels.
*/}}
{{- define "ldap-elector.webhookName" -}}
{{- printf "%s-webhook" (include "ldap-elector.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ldap-elector.serviceAccountName" -}}
{{- default (include "ldap-elector.webhookName" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Name of the controller's Deployment, ServiceAccount, RBAC, NetworkPolicy and PDB. */}}
{{- define "ldap-elector.controllerName" -}}
{{- printf "%s-controller" (include "ldap-elector.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ldap-elector.controllerServiceAccountName" -}}
{{- default (include "ldap-elector.controllerName" .) .Values.controller.serviceAccount.name }}
{{- end }}

{{/*
"true" when the controller runs: it reconciles (reconcile) or owns the serving certificate
(certMode=secret); "" otherwise.
*/}}
{{- define "ldap-elector.controllerEnabled" -}}
{{- if or .Values.reconcile (eq .Values.certMode "secret") }}true{{ end }}
{{- end }}

{{/* The user name the controller's token authenticates as (the policies' exemptions). */}}
{{- define "ldap-elector.controllerUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "ldap-elector.controllerServiceAccountName" .) }}
{{- end }}

{{/* The Secret holding the serving certificate (secret and certManager modes). */}}
{{- define "ldap-elector.certSecretName" -}}
{{- if eq .Values.certMode "files" }}
{{- required "files.secretName is required when certMode=files" .Values.files.secretName }}
{{- else }}
{{- default (printf "%s-tls" (include "ldap-elector.webhookName" .)) .Values.certSecret.name }}
{{- end }}
{{- end }}

{{- define "ldap-elector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ldap-elector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ldap-elector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "ldap-elector.controllerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ldap-elector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The labels of every object but the selector labels. */}}
{{- define "ldap-elector.commonLabels" -}}
helm.sh/chart: {{ include "ldap-elector.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ldap-elector
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ldap-elector.labels" -}}
{{ include "ldap-elector.selectorLabels" . }}
{{ include "ldap-elector.commonLabels" . }}
{{- end }}

{{- define "ldap-elector.controllerLabels" -}}
{{ include "ldap-elector.controllerSelectorLabels" . }}
{{ include "ldap-elector.commonLabels" . }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: a digest wins (pinning, BSI SYS.1.6.A6);
the tag defaults to the chart's appVersion; "latest" is refused.
*/}}
{{- define "ldap-elector.image" -}}
{{- $img := .image }}
{{- $repo := required (printf "%s.repository is required" .what) $img.repository }}
{{- if $img.digest }}
{{- if not (hasPrefix "sha256:" $img.digest) }}
{{- fail (printf "%s.digest must look like sha256:<hex>, got %q" .what $img.digest) }}
{{- end }}
{{- printf "%s@%s" $repo $img.digest }}
{{- else }}
{{- $tag := default .appVersion $img.tag }}
{{- if eq $tag "latest" }}
{{- fail (printf "%s.tag must not be \"latest\": pin a version or a digest" .what) }}
{{- end }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{- define "ldap-elector.webhookImage" -}}
{{- include "ldap-elector.image" (dict "image" .Values.image "what" "image" "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "ldap-elector.sidecarImage" -}}
{{- include "ldap-elector.image" (dict "image" .Values.sidecar.image "what" "sidecar.image" "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
Namespaces the webhooks never see: kube-system, the release namespace (the webhook must
never depend on itself) and any the admin adds.
*/}}
{{- define "ldap-elector.excludedNamespaces" -}}
{{- $ns := list "kube-system" .Release.Namespace }}
{{- range .Values.webhookConfiguration.excludeNamespaces }}
{{- $ns = append $ns . }}
{{- end }}
{{- toYaml (uniq $ns) }}
{{- end }}

{{/*
The namespace labels the webhook selects by (YAML map): webhookConfiguration.namespaceSelector.matchLabels,
plus ldap-elector.dev/enabled: "true" while webhookConfiguration.namespaceOptInLabel is on (the default).
*/}}
{{- define "ldap-elector.namespaceMatchLabels" -}}
{{- $labels := deepCopy (.Values.webhookConfiguration.namespaceSelector.matchLabels | default dict) }}
{{- if .Values.webhookConfiguration.namespaceOptInLabel }}
{{- $_ := set $labels "ldap-elector.dev/enabled" "true" }}
{{- end }}
{{- toYaml $labels }}
{{- end }}

{{- define "ldap-elector.namespaceSelector" -}}
{{- with include "ldap-elector.namespaceMatchLabels" . | fromYaml }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- include "ldap-elector.excludedNamespaces" . | nindent 6 }}
{{- with .Values.webhookConfiguration.namespaceSelector.matchExpressions }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Validation of values that would otherwise render a broken or unsafe install.
*/}}
{{- define "ldap-elector.validate" -}}
{{- if not (has .Values.certMode (list "secret" "certManager" "files")) }}
{{- fail (printf "certMode must be one of secret, certManager, files; got %q" .Values.certMode) }}
{{- end }}
{{- if not (has .Values.tlsProfile (list "bsi" "rustls-default")) }}
{{- fail (printf "tlsProfile must be bsi or rustls-default; got %q" .Values.tlsProfile) }}
{{- end }}
{{- if not (has .Values.failurePolicy (list "Fail" "Ignore")) }}
{{- fail (printf "failurePolicy must be Fail or Ignore; got %q" .Values.failurePolicy) }}
{{- end }}
{{- if or (lt (int .Values.timeoutSeconds) 1) (gt (int .Values.timeoutSeconds) 30) }}
{{- fail "timeoutSeconds must be between 1 and 30 (the API server's limit)" }}
{{- end }}
{{- if and (eq .Values.certMode "files") (not .Values.files.caBundle) }}
{{- fail "files.caBundle (base64 PEM of the CA that signed files.secretName) is required when certMode=files" }}
{{- end }}
{{- if and (include "ldap-elector.controllerEnabled" .) (eq (include "ldap-elector.serviceAccountName" .) (include "ldap-elector.controllerServiceAccountName" .)) }}
{{- fail "serviceAccount.name and controller.serviceAccount.name must differ: the admission server's account only reads, the controller's writes" }}
{{- end }}
{{- end }}

{{/*
A label selector as a CEL condition on the labels of `.meta` (a CEL expression of an
ObjectMeta, e.g. "object.metadata" or "namespaceObject.metadata"): matchLabels and
matchExpressions (In, NotIn, Exists, DoesNotExist) as the API server evaluates them.
"true" for an empty selector. Keys and values are JSON-quoted (valid CEL strings).
*/}}
{{- define "ldap-elector.selectorCel" -}}
{{- $meta := .meta }}
{{- $terms := list }}
{{- range $k, $v := (.selector.matchLabels | default dict) }}
{{- $terms = append $terms (printf "(has(%s.labels) && %s in %s.labels && %s.labels[%s] == %s)" $meta (toJson $k) $meta $meta (toJson $k) (toJson $v)) }}
{{- end }}
{{- range (.selector.matchExpressions | default list) }}
{{- $has := printf "(has(%s.labels) && %s in %s.labels)" $meta (toJson .key) $meta }}
{{- $in := printf "(%s && %s.labels[%s] in %s)" $has $meta (toJson .key) (toJson (.values | default list)) }}
{{- if eq .operator "In" }}{{ $terms = append $terms $in }}
{{- else if eq .operator "NotIn" }}{{ $terms = append $terms (printf "!%s" $in) }}
{{- else if eq .operator "Exists" }}{{ $terms = append $terms $has }}
{{- else if eq .operator "DoesNotExist" }}{{ $terms = append $terms (printf "!%s" $has) }}
{{- else }}{{ fail (printf "label selector operator %q is not In, NotIn, Exists or DoesNotExist" .operator) }}
{{- end }}
{{- end }}
{{- if $terms }}{{ join " && " $terms }}{{ else }}true{{ end }}
{{- end }}

{{/*
CEL: the pod of a CREATE is one the pod webhook reviews (its rules, namespaceSelector,
objectSelector and matchConditions, as rendered in mutatingwebhookconfiguration.yaml).
*/}}
{{- define "ldap-elector.podWebhookScopeCel" -}}
{{- $podLabels := .Values.webhookConfiguration.objectSelector.matchLabels | default dict }}
{{- if .Values.webhookConfiguration.podOptInLabel }}
{{- $podLabels = merge (dict "ldap-elector.dev/inject" "true") $podLabels }}
{{- end }}
{{- $podExpressions := prepend (.Values.webhookConfiguration.objectSelector.matchExpressions | default list) (dict "key" "statefulset.kubernetes.io/pod-name" "operator" "Exists") }}
{{- $excluded := include "ldap-elector.excludedNamespaces" . | fromYamlArray }}
{{- $nsSelector := dict "matchLabels" (include "ldap-elector.namespaceMatchLabels" . | fromYaml) "matchExpressions" .Values.webhookConfiguration.namespaceSelector.matchExpressions }}
{{- $ns := include "ldap-elector.selectorCel" (dict "meta" "namespaceObject.metadata" "selector" $nsSelector) }}
{{- $pod := include "ldap-elector.selectorCel" (dict "meta" "object.metadata" "selector" (dict "matchLabels" $podLabels "matchExpressions" $podExpressions)) }}
{{- printf "!(namespaceObject.metadata.name in %s) && %s && %s && has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, r.kind == 'StatefulSet')" (toJson $excluded) $ns $pod }}
{{- end }}

{{/*
Where a Deployment's pods run: nodeSelector, tolerations, affinity and spread, shared by the
admission server and the controller. `.root` is the chart context, `.selector` the pods'
selector labels (YAML), so each Deployment spreads and repels only its own replicas.
*/}}
{{- define "ldap-elector.scheduling" -}}
{{- $v := .root.Values }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- .selector | nindent 12 }}
{{- else if eq $v.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- .selector | nindent 14 }}
{{- end }}
topologySpreadConstraints:
  {{- if $v.topologySpreadConstraints }}
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
  {{- else }}
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    matchLabelKeys:
      - pod-template-hash
    labelSelector:
      matchLabels:
        {{- $.selector | nindent 8 }}
  {{- end }}
  {{- end }}
{{- end }}

{{/*
The API token volume of both Deployments (automountServiceAccountToken is false): the same
three files as the default token volume, so in-cluster config works.
*/}}
{{- define "ldap-elector.apiTokenVolume" -}}
- name: api-token
  projected:
    defaultMode: 0440
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .Values.tokenExpirationSeconds }}
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end }}

{{/*
Pod template parts both Deployments (admission server and controller) share.
podAnnotations: the pod's annotations (scrape hints, podAnnotations), or nothing.
*/}}
{{- define "ldap-elector.podAnnotations" -}}
{{- if or .Values.podAnnotations .Values.metrics.scrapeAnnotations }}
annotations:
  {{- if .Values.metrics.scrapeAnnotations }}
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ .Values.ports.health | quote }}
  prometheus.io/path: /metrics
  {{- end }}
  {{- with .Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* The pod spec's hardening: no implicit token, no host namespaces, podSecurityContext. */}}
{{- define "ldap-elector.podHardening" -}}
automountServiceAccountToken: false
enableServiceLinks: false
hostNetwork: false
hostPID: false
hostIPC: false
terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Liveness and readiness on the health port (/livez, /readyz). */}}
{{- define "ldap-elector.probes" -}}
livenessProbe:
  httpGet:
    path: /livez
    port: health
    scheme: HTTP
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: health
    scheme: HTTP
  {{- toYaml .Values.readinessProbe | nindent 2 }}
{{- end }}
