"""Query strings of the AI pages, parsed by forms like every other page's (cases.forms)."""

from django import forms

from .crops import CROP_MPP, CROP_PX


class CropForm(forms.Form):
    """A finding's crop: ``px`` pixels square at ``mpp`` µm/px."""

    px = forms.IntegerField(required=False, min_value=32, max_value=512)
    mpp = forms.FloatField(required=False, min_value=0.1, max_value=2.0)

    def size_and_scale(self) -> tuple[int, float]:
        data = self.cleaned_data
        return data["px"] or CROP_PX, data["mpp"] or CROP_MPP
