-- Argo CD health check for ClusterSecurityPolicy, CertificateRotation and KmsKeyVaultMode
-- (clustersecurity.io). It reads the kstatus conditions the operator writes:
--   status not yet written, or observedGeneration behind metadata.generation -> Progressing
--   Stalled=True (invalid spec, failed operation, unusable key)             -> Degraded
--   Ready=True                                                              -> Healthy
--   anything else (Reconciling=True, waiting for the cluster)               -> Progressing
-- Tested with Lua 5.1 against status fixtures in tests/argocd_health.rs.
local hs = {}

local function condition(conditions, type_)
  if conditions == nil then return nil end
  for _, c in ipairs(conditions) do
    if c.type == type_ then return c end
  end
  return nil
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local stalled = condition(obj.status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end

local ready = condition(obj.status.conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

local reconciling = condition(obj.status.conditions, "Reconciling")
local why = reconciling or ready
hs.status = "Progressing"
if why ~= nil then
  hs.message = (why.reason or "Reconciling") .. ": " .. (why.message or "")
else
  hs.message = "Waiting for the operator to report conditions"
end
return hs
