"""The reference paper's evaluation protocol on the shared corpora, with speed and communication.

Training sites: MACCROBAT, CHIA and DDI's DrugBank part. External cohort, never trained on:
ADE (relations and entity recall: it annotates only related entities). New low-resource
site: DDI's MedLine abstracts, a held-out source, with only a few training documents.

Arms, every one with the same training budget (the optimizer steps the federation takes
in total, R rounds x the sum over sites of each site's steps per round):
- `zero-shot`: the base model;
- `single-<site>`: trained on that site alone;
- `centralized`: trained on the three sites' pooled instances;
- `fedmedlora`, `fedmedlora-plus` (coordinator scoring), `fedmedlora-plus-sites`
  (site scoring), `exact`, and Fed-MedLoRA with float16 and int8 adapters on the wire: real
  `flwr run`s on Flower's simulation engine (a profile names the ones it runs);
- label skew (`standard`): `fedmedlora-skew` and `fedmedlora-plus-skew` on three sites made
  from MACCROBAT, each annotating one group of entity types, tested on MACCROBAT.
Local arms run the ClientApp's training function (`train_round`, round by round with the
same schedule), so the only difference from the federated arms is the federation.

New site: the base model, the Fed-MedLoRA global adapter as is, a fresh adapter trained
on the few documents alone, and the global adapter adapted on them (same steps).

Every adapter is scored on every test split (strict and lenient F1 for NER and RE, 95%
document-level bootstrap intervals). Per-round validation curves of the federated arms are
drawn as PNG. Speed: the ClientApp's training loop versus a plain PEFT loop on the same
model and data (benchmarks/train_speed.py), and the tokens/s the sites reported inside
the federated run. Federation overhead (wall time minus the time during which a site trained
or evaluated or the coordinator evaluated, concurrent work counted once) of one small
configuration run in simulation and as a loopback deployment. Bytes per round against a full-model update.

    .venv/bin/python -m benchmarks.protocol --profile quick --data data --results docs/RESULTS.md

`--data` holds the prepared site folders `maccrobat`, `chia`, `ddi`, `ade` (see the
docs/getting-started.md, "Real corpora"). Everything finished is kept under `--out` and reused when the
command is run again (training, federated runs, generated outputs), so an interrupted
run continues. Writes `results.json`, `RESULTS.md` and `plots/*.png` into `--out`. With
`--results`, each arm's scores also go into the results.json beside it as soon as the arm
is scored (`ArmStore`), so a later run, even with an empty `--out`, skips the arms already
there. The paper's claims are decided by paired comparisons (benchmarks/claims.py).

Modules: `profiles` (sites, arms, profiles), `sites` (the site folders), `workbench` (the
local model: training and answers), `scoring`, `arms` (running and scoring every arm),
`overhead`, `report` (RESULTS.md, plots, claims), `store` (results.json, arm by arm) and
`cli` (the command line and the profile driver; `python -m benchmarks.protocol`).
"""
