-- Argo CD health check for sandbox.microvm.dev/Sandbox.
-- Install it under resource.customizations.health.sandbox.microvm.dev_Sandbox
-- in the argocd-cm ConfigMap (see docs/gitops.md). It reads only status,
-- which the operator writes; the operator never writes spec, so Argo CD
-- sees no drift.
hs = {}
local function cond(obj, t)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the manager to place the sandbox"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the manager to observe generation " .. obj.metadata.generation
  return hs
end

local phase = obj.status.phase
local ready = cond(obj, "Ready")
local message = phase
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  message = ready.message
end
hs.message = message

local wantStopped = obj.spec ~= nil and obj.spec.state == "Stopped"
local reason = obj.status.terminationReason

if phase == "Running" then
  hs.status = "Healthy"
elseif phase == "Created" or phase == "Starting" or phase == "Draining" then
  hs.status = "Progressing"
elseif phase == "Stopped" then
  if wantStopped then
    hs.status = "Suspended"
  elseif reason == "Completed" then
    hs.status = "Healthy"
  elseif reason == "Failed" or reason == "PolicyViolation" then
    hs.status = "Degraded"
  else
    -- MaxDurationExceeded, IdleTimeout, a requested stop: ended as asked.
    hs.status = "Suspended"
  end
elseif phase == "Crashed" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
end
return hs
