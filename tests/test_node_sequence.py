"""A new node's full import sequence on the generated sample: species, line lists,
references, then the two passes; everything VALD carries ends up stored and linked."""
from django.db.models import Q

import valdimport as vi
from node_atom.models import State, Transition
from node_common.models import LineList, Reference, Species, SpeciesComponent
from tests.conftest import DATA, SAMPLE


def test_full_sequence_for_a_new_node(engine):
    vi.import_species(str(DATA / "species.csv"), using=engine)
    vi.import_linelists(str(DATA / "linelists.dat"), using=engine)
    vi.import_references(str(DATA / "refs.bib"), using=engine)
    levels = vi.import_states(str(SAMPLE), using=engine)
    summary = vi.import_transitions(str(SAMPLE), using=engine)
    assert summary.tally.transitions == 2000 and summary.tally.species_created == []

    species = Species.objects.using(engine)
    assert not species.filter(name=None).exists()
    molecules = species.filter(id__gte=10000, states__isnull=False).distinct()
    assert molecules.exists()
    for molecule in molecules:
        assert SpeciesComponent.objects.using(engine).filter(molecule=molecule).count() >= 2
    with_levels = species.filter(states__isnull=False).distinct()
    assert not with_levels.filter(ground_state=None).exists()

    methods = dict(LineList.objects.using(engine).values_list("id", "method"))
    for ll1, wave_method in Transition.objects.using(engine).values_list("ll1", "wave_method"):
        assert wave_method == methods.get(ll1)
    for ll, energy_method in State.objects.using(engine).values_list("energy_linelist_id", "energy_method"):
        assert energy_method == methods.get(ll)

    keys = set(Reference.objects.using(engine).values_list("id", flat=True))
    used = set()
    for column in ("wave_ref_id", "loggf_ref_id", "gammarad_ref_id", "gammastark_ref_id", "waals_ref_id"):
        for value in Transition.objects.using(engine).exclude(**{column: None}).values_list(column, flat=True):
            used.update(value.split(","))
    assert used and used <= keys

    states = State.objects.using(engine)
    decoded = states.filter(Q(S__isnull=False) | Q(J1__isnull=False) | Q(K__isnull=False)
                            | Q(n__isnull=False) | Q(elecstate__isnull=False))
    described = states.exclude(term_desc=None).count()
    assert decoded.count() + levels.tally.undecoded == described
    assert levels.tally.undecoded < described / 20  # the generator's few oddities
    assert decoded.filter(coupling_case="LS", S__isnull=False, L__isnull=False, P__in=["1", "2"]).exists()
    assert decoded.filter(coupling_case="JJ", J1__isnull=False, J2__isnull=False).exists()
    assert decoded.filter(coupling_case="JK", K__isnull=False, Jc__isnull=False).exists()
    assert decoded.filter(coupling_case="LK", K__isnull=False, L__isnull=False).exists()
    assert decoded.filter(coupling_case="Ha", Omega__isnull=False, kronig_parity__in=["e", "f"]).exists()
    assert decoded.filter(coupling_case="Hb", rotN__isnull=False).exists()
    assert decoded.filter(n__isnull=False).exists()
