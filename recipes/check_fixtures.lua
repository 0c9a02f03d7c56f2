-- Checks ftl against every reference fixture in a directory: models, PEFT and AdapterHub adapters,
-- merged adapters. Exits non-zero when any case is out of tolerance.
--   ftl run recipes/check_fixtures.lua dir=tests/fixtures/hf [tol=1e-4] [extra=tests/fixtures/ref]
--       [training=true] [device=cuda] [dtype=f32]
-- (`extra`: more directories to look for base models in; `training`: also train the `train-*`
-- cases three steps and compare losses and updates)
local ftl = require("ftl")
local check = require("check")

local dir = ftl.args.dir or error("pass dir=<fixture directory>, e.g. dir=tests/fixtures/hf")
local extra = ftl.args.extra
if type(extra) == "string" then extra = {extra} end
local report = check.fixtures(dir, {tol = ftl.args.tol or 1e-4, extra = extra, device = ftl.args.device, dtype = ftl.args.dtype,
  training = ftl.args.training, loss_tol = ftl.args.loss_tol})
if report.failed > 0 then os.exit(1) end
