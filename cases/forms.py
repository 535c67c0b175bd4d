from django import forms
from django.conf import settings

from .models import Case


class QueueFilterForm(forms.Form):
    q = forms.CharField(required=False, label="Search accession or patient")
    status = forms.ChoiceField(
        required=False, choices=[("", "Open cases"), ("all", "All")] + Case.Status.choices
    )


class SlideUploadForm(forms.Form):
    file = forms.FileField(label="Slide file")
    label = forms.CharField(required=False, max_length=64, help_text="e.g. block A1, H&E")

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > settings.SLIDE_UPLOAD_MAX_BYTES:
            limit = settings.SLIDE_UPLOAD_MAX_BYTES / 1024**3
            raise forms.ValidationError(f"The file is larger than the {limit:.1f} GiB limit.")
        return upload
